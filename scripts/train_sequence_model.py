"""Stage 5: train the sequence model M (MDN-RNN or transformer, seq.model) on encoded rollouts.

Input:  RUN/encoded/{train,valid}/encoded.tfrecord-* + manifest.json (stage 4; valid optional).
Output: RUN/seq/checkpoints/ (model, optimizer, step; a rerun resumes from the latest),
        RUN/seq/tb/ (TensorBoard: train/ and valid/ latent_nll, reward_nll, done_nll, loss),
        RUN/seq/export/ (model.json + model.weights.h5, loaded by wm/models/export.load),
        RUN/seq/initial_latents.npz (mu, logvar of every training rollout's first frame: where a
        dream starts), RUN/seq/snapshot/, and RUN/seq/DONE.

    python scripts/train_sequence_model.py --run_dir=RUN [--config.seq.model=transformer]

SIGTERM or SIGUSR1 (SLURM preemption) saves a checkpoint and exits 75; rerunning the same command
continues the step counter (with the configured seq.learning_rate). Raising
--config.seq.train_steps tops up a finished run. A corrupted encoded shard stops with exit 2 and a
message naming it and how to write it again.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from wm.infra import cli
from wm.stages import seq


def main(stage: cli.Stage) -> None:
  seq.run(stage)


if __name__ == '__main__':
  cli.run('seq', main)
