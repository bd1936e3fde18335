"""Stage 1: collect random-policy rollouts in parallel.

Input:  the experiment config (env, collect.*).
Output: RUN/rollouts/rollout-000123.npz, one per episode (format: wm/rollouts.py), and
        RUN/rollouts/DONE once all collect.num_rollouts exist.

    python scripts/collect_rollouts.py --run_dir=RUN --config=configs/carracing.py:debug \\
        --parallelism=2 [--num_tasks=8 --task_index=3]

Rerunning tops the folder up to collect.num_rollouts; any number of instances may write into the
same folder at once (SLURM array tasks pass --task_index/--num_tasks to split the indices).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import flags

from wm import rollouts
from wm.infra import cli
from wm.stages import collect

_PARALLELISM = flags.DEFINE_integer('parallelism', 1, 'Worker processes in this job.',
                                     lower_bound=1)
_NUM_TASKS, _TASK_INDEX = cli.define_task_flags('rollouts')


def check(stage: cli.Stage) -> None:
  rollouts.require_kept(stage.dir, 'collecting (collect.num_rollouts='
                        f'{stage.config.collect.num_rollouts})')


def main(stage: cli.Stage) -> None:
  collect.run(stage, _PARALLELISM.value, _TASK_INDEX.value, _NUM_TASKS.value)


if __name__ == '__main__':
  cli.run('collect', main, check=check)
