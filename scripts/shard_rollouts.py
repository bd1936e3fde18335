"""Stage 2: pack rollouts into GZIP TFRecord shards with a train/validation split.

Input:  RUN/rollouts/rollout-*.npz (stage 1).
Output: RUN/records/{train,valid}/raw.tfrecord-00003-of-00074, one tf.train.Example per rollout
        (schema: wm/records.py), manifest.json per split (rollouts, frames, bytes and sha256 per
        shard), and RUN/records/DONE.

    python scripts/shard_rollouts.py --run_dir=RUN --parallelism=2 [--num_tasks=4 --task_index=1]

Shards are sized by records.shard_size_mb. A rerun after a kill writes only what is missing.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import flags

from wm import rollouts
from wm.infra import cli
from wm.stages import shard

_PARALLELISM = flags.DEFINE_integer('parallelism', 1, 'Worker processes in this job.',
                                     lower_bound=1)
_NUM_TASKS, _TASK_INDEX = cli.define_task_flags('shards')
_INPUT_DIR = flags.DEFINE_string('input_dir', None, 'Rollout folder (default RUN/rollouts).')


def check(stage: cli.Stage) -> None:
  rollouts.require_kept(_INPUT_DIR.value or stage.run.stage_dir('collect'), 'sharding them again')


def main(stage: cli.Stage) -> None:
  shard.run(stage, _PARALLELISM.value, _TASK_INDEX.value, _NUM_TASKS.value, _INPUT_DIR.value)


if __name__ == '__main__':
  cli.run('shard', main, check=check)
