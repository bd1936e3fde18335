"""Stage 3: train V, the convolutional VAE that maps a frame to a small latent z.

Input:  RUN/records/{train,valid}/raw.tfrecord-* (stage 2).
Output: RUN/vae/checkpoints/ (resume state), RUN/vae/tb/ (TensorBoard scalars and frames beside
        their reconstructions), RUN/vae/export/ (the trained encoder: load it with
        wm.models.export.load(RUN/vae/export, kind='encoder')) and RUN/vae/DONE.

    python scripts/train_vae.py --run_dir=RUN [--config.vae.train_steps=40000]

Rerunning the same command continues from the latest checkpoint with the same step counter.
SIGTERM or SIGUSR1 (SLURM preemption or --signal before the time limit) saves a checkpoint and
exits with status 75 (requeue me). A NaN loss stops with a message and the last good checkpoint
intact; --check_numerics then names the op, --run_eagerly lets a debugger step through it. A
corrupted record shard stops with exit 2 and a message naming it and how to write it again.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import cpu_kernels, quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log
cpu_kernels.use_onednn()  # V trains 1.6x faster on oneDNN's kernels (wm/infra/cpu_kernels.py)

from absl import flags

from wm import artifacts
from wm.infra import cli

_CHECK_NUMERICS = flags.DEFINE_bool('check_numerics', False,
                                    'Stop at the first op that makes a NaN or Inf (slow).')
_RUN_EAGERLY = flags.DEFINE_bool('run_eagerly', False,
                                 'Run the train step eagerly instead of as a tf.function (slow).')


def check(stage: cli.Stage) -> None:
  artifacts.require_shards(stage.run, 'shard')


def main(stage: cli.Stage) -> None:
  from wm.stages import vae  # TensorFlow loads after the flags, config and input checks
  vae.run(stage, check_numerics=_CHECK_NUMERICS.value, run_eagerly=_RUN_EAGERLY.value)


if __name__ == '__main__':
  cli.run('vae', main, check=check)
