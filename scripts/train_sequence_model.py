"""Stage 5: train the sequence model M (MDN-RNN or transformer, seq.model) on encoded rollouts.

Input:  RUN/encoded/{train,valid}/encoded.tfrecord-* + manifest.json (stage 4; valid optional).
Output: RUN/seq/checkpoints/ (model, optimizer, step; a rerun resumes from the latest),
        RUN/seq/tb/ (TensorBoard: train/ and valid/ latent_nll, reward_nll, done_nll, loss),
        RUN/seq/export/ (model.json + model.weights.h5, loaded by wm/models/export.load),
        RUN/seq/initial_latents.npz (mu, logvar of every training rollout's first frame: where a
        dream starts), RUN/seq/snapshot/, and RUN/seq/DONE; with seq.judges, each judge M's
        checkpoints, export and DONE in RUN/seq/judges/<i>/ (M's DONE comes last).

    python scripts/train_sequence_model.py --run_dir=RUN [--config.seq.model=transformer]
    python scripts/train_sequence_model.py --run_dir=RUN --config.seq.judges=1 --parallelism=2

--parallelism=N trains up to N of M and its judges at once, each judge in a process of its own
(its log in RUN/logs/seq-judge<i>.log), the cores split between them; --judge=i trains judge i
alone (e.g. as a job of its own: the stage without --judge then waits for it, then uses it).

SIGTERM or SIGUSR1 (SLURM preemption) saves a checkpoint and exits 75; rerunning the same command
continues the step counter (with the configured seq.learning_rate). Raising
--config.seq.train_steps tops up a finished run. A corrupted encoded shard stops with exit 2 and a
message naming it and how to write it again.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import cpu_kernels, quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log
cpu_kernels.use_onednn()  # Doom's M trains 1.16x faster on oneDNN's kernels (wm/infra/cpu_kernels.py)

from absl import flags

from wm import artifacts
from wm.errors import UserError
from wm.infra import cli

_PARALLELISM = flags.DEFINE_integer(
    'parallelism', 1, 'Trainings at once: M here and up to N - 1 of its seq.judges in processes '
    'of their own, the cores split evenly (1: one after the other, on all cores).', lower_bound=1)
_JUDGE = flags.DEFINE_integer(
    'judge', 0, 'Train only judge M number i of seq.judges (1, 2, ...), on the cores of one of '
    '--parallelism trainings; 0: M, then every judge.', lower_bound=0)


def check(stage: cli.Stage) -> None:
  judges = stage.config.seq.judges
  if _JUDGE.value > judges:
    which = f'the judges are 1 to {judges}' if judges else 'there is no judge to train'
    raise UserError(f'--judge={_JUDGE.value} but seq.judges={judges}: {which} (raise '
                    '--config.seq.judges to train more)')
  for index in [_JUDGE.value] if _JUDGE.value else range(1, judges + 1):
    artifacts.require_judge_data(artifacts.seq_judge_run(stage.run, index),
                                 stage.config.seq.judge_data)
  artifacts.require_shards(stage.run, 'encode')


def main(stage: cli.Stage) -> None:
  from wm.stages import seq  # TensorFlow loads after the flags, config and input checks
  seq.run(stage, _PARALLELISM.value, _JUDGE.value)


if __name__ == '__main__':
  cli.run('seq', main, check=check)
