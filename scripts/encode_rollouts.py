"""Stage 4: re-encode the raw rollouts of each split into latent rollouts with the trained V.

Input:  RUN/records/{train,valid}/raw.tfrecord-* (stage 2) and the encoder RUN/vae/export
        (stage 3; another with --encoder_dir).
Output: RUN/encoded/{train,valid}/encoded.tfrecord-00007-of-00012: per rollout mu and logvar
        (T+1, z) plus actions, rewards, terminated, truncated (schema: wm/records.py);
        manifest.json per split once all its outputs exist; RUN/encoded/DONE once every split's.

    python scripts/encode_rollouts.py --run_dir=RUN [--split=train] \\
        [--num_outer_shards=4 --outer_shard_index=2 --num_sub_shards=3 --gpu_index=1]

--num_outer_shards splits a split's input shards into that many groups, --outer_shard_index picks
this process's group, --num_sub_shards is how many output files it writes: outer x sub outputs in
all. Run one process per outer index (any mix of SLURM jobs, array tasks and GPUs, all at once);
a rerun skips complete outputs and redoes partial ones.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import cpu_kernels, quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log
cpu_kernels.use_onednn()  # V encodes 1.5x faster on oneDNN's kernels (wm/infra/cpu_kernels.py)

from absl import flags

from wm import artifacts
from wm.errors import UserError
from wm.infra import cli

_SPLIT = flags.DEFINE_enum('split', 'all', ['train', 'valid', 'all'], 'Which split to encode.')
_NUM_OUTER = flags.DEFINE_integer('num_outer_shards', 1,
                                  'Groups the input shards are cut into (one per process).')
_OUTER_INDEX = flags.DEFINE_integer('outer_shard_index', 0, 'The group this process encodes.')
_NUM_SUB = flags.DEFINE_integer('num_sub_shards', 1, 'Output files this process writes.')
_GPU_INDEX = flags.DEFINE_integer('gpu_index', 0, 'The GPU this process uses (CPU if none).')
_ENCODER_DIR = flags.DEFINE_string('encoder_dir', None,
                                   'Exported encoder (default RUN/vae/export).')


def check_flags() -> None:
  if _NUM_OUTER.value < 1 or _NUM_SUB.value < 1:
    raise UserError(f'--num_outer_shards ({_NUM_OUTER.value}) and --num_sub_shards '
                    f'({_NUM_SUB.value}) must be >= 1')
  if not 0 <= _OUTER_INDEX.value < _NUM_OUTER.value:
    raise UserError(f'--outer_shard_index={_OUTER_INDEX.value} must be in [0, '
                    f'--num_outer_shards={_NUM_OUTER.value})')


def check(stage: cli.Stage) -> None:
  check_flags()
  if not _ENCODER_DIR.value:
    artifacts.require_vae(stage.run)
  # (with --split=all the valid split is optional)
  artifacts.require_shards(stage.run, 'shard', 'train' if _SPLIT.value == 'all' else _SPLIT.value)


def main(stage: cli.Stage) -> None:
  from wm.stages import encode  # TensorFlow loads after the flags, config and input checks
  encode.run(stage, _SPLIT.value, _NUM_OUTER.value, _OUTER_INDEX.value, _NUM_SUB.value,
             _GPU_INDEX.value, _ENCODER_DIR.value)


if __name__ == '__main__':
  cli.run('encode', main, check=check)
