"""Stage 'evaluate': N real episodes of the trained controller (or a random baseline), scored.

Input:  RUN/vae/export, RUN/seq/export and RUN/controller/best.npz (or --params=FILE); nothing
        but the config with --policy=random.
Output: RUN/evaluate/result.json: returns of every episode, mean, std, min, max, the policy and
        the seeds' stream; RUN/evaluate/DONE. Prints `mean +- std (min .. max)` as the paper's
        table does. --output=NAME.json writes a side result instead (a baseline, another
        controller's --params), beside result.json: DONE, and the score the run reports
        (`python -m wm status`, the pipeline's summary), stay the run's own, and so does
        RUN/config.json, whatever --config says (--save_config aside); its code and config
        go to RUN/evaluate/snapshot-NAME/, leaving RUN/evaluate/snapshot/ to result.json.

    python scripts/evaluate.py --run_dir=RUN --episodes=100 --parallelism=2
    python scripts/evaluate.py --run_dir=RUN --policy=random --output=random.json
    mpiexec -n 8 python scripts/evaluate.py --run_dir=RUN --episodes=1024

The episodes' seeds come from their own seed stream (wm/es.py TEST_STREAM), so they are never the
episodes the controller was trained or selected on. The random baseline draws a uniformly random
action every frame. Frames are always drawn at the environment's own resolution
(env.render_scale=1), so the score is on CarRacing's own pixels whatever resolution the
controller was trained at.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import flags

from wm import artifacts
from wm.infra import cli, mpi, snapshot

_POLICY = flags.DEFINE_enum('policy', 'controller', ['controller', 'random'],
                            'controller: the trained one; random: uniform random actions.')
_EPISODES = flags.DEFINE_integer('episodes', None, 'Episodes to play (default: '
                                  'controller.test_episodes).', lower_bound=1)
_PARALLELISM = flags.DEFINE_integer('parallelism', 1, 'Local worker processes (ignored under '
                                    'MPI: the ranks are the workers).', lower_bound=1)
_PARAMS = flags.DEFINE_string('params', None, 'Controller parameters (default: '
                              'RUN/controller/best.npz).')
_OUTPUT = flags.DEFINE_string('output', 'result.json', 'Result file name inside RUN/evaluate/.')
flags.register_validator(  # refused before anything is written (its snapshot-NAME/ included)
    'output', lambda name: os.path.basename(name) == name and name.endswith('.json'),
    message='--output must be a file name ending in .json (it is written inside RUN/evaluate/)')


def side_name() -> str | None:
  """NAME of --output=NAME.json, a side result; None for the stage's own result.json."""
  return None if _OUTPUT.value == _OUTPUT.default else os.path.splitext(_OUTPUT.value)[0]


def check(stage: cli.Stage) -> None:
  if _POLICY.value == 'controller':
    artifacts.require_world_model(stage.run)
    if not _PARAMS.value:
      artifacts.require_controller(stage.run)


def main(stage: cli.Stage) -> None:
  from wm.stages import evaluate  # TensorFlow loads only after the checks
  evaluate.run(stage, _POLICY.value, _EPISODES.value, _PARALLELISM.value, _PARAMS.value,
               _OUTPUT.value)


if __name__ == '__main__':
  if mpi.launched_ranks()[1] > 0:
    sys.argv.append('--nostore_snapshot')  # rank 0 writes the stage's snapshot
  # A side result keeps the stage's snapshot, which made result.json: its own is snapshot-NAME.
  cli.run('evaluate', main, side_result=lambda: side_name() is not None,
          snapshot_name=lambda: snapshot.folder(side_name()), check=check)
