"""Stage 6: evolve the controller with CMA-ES, in the real environment or in the dream.

Input:  RUN/vae/export (V), RUN/seq/export (M), RUN/seq/initial_latents.npz (dream starts),
        the config's controller.* (population, trials, generations, mode, ...).
Output: RUN/controller/es_state.npz (the search, resumable), history.jsonl (one line per
        generation), best.npz (the best parameters), tb/ (TensorBoard), DONE.

    python scripts/train_controller.py --run_dir=RUN --config=configs/carracing.py:debug \\
        [--parallelism=2] [--config.controller.mode=dream]
    mpiexec -n 8 python scripts/train_controller.py --run_dir=RUN   # or srun -n 8 ... on SLURM

Rerunning continues from the last saved generation, also in the other mode: train in the dream,
then rerun with --config.controller.mode=real (and more controller.generations) to continue
the same search in the real environment. Under MPI rank 0 owns CMA-ES and every rank plays
a share of the episodes; without MPI `--parallelism` local processes do. SIGTERM/SIGUSR1 save
after the current generation and exit 75 (requeue).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import flags

from wm import artifacts
from wm.infra import cli, mpi

_PARALLELISM = flags.DEFINE_integer('parallelism', 1, 'Local worker processes for real-env '
                                    'episodes (ignored under MPI: the ranks are the workers).')


def check(stage: cli.Stage) -> None:
  artifacts.require_world_model(stage.run)
  if stage.config.controller.start_from:
    artifacts.require_start_run(stage.run, stage.config.controller.start_from)


def main(stage: cli.Stage) -> None:
  from wm.stages import controller  # TensorFlow loads only after the checks
  controller.run(stage, _PARALLELISM.value)


if __name__ == '__main__':
  if mpi.launched_ranks()[1] > 0:
    sys.argv.append('--nostore_snapshot')  # rank 0 writes the stage's snapshot
  cli.run('controller', main, check=check)
