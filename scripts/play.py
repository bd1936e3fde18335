"""Stage 'play': watch the trained agent, with V's and M's panels beside the frames, and record it.

Input:  RUN/vae/export (V), RUN/seq/export (M), RUN/controller/ (C's best parameters), all from
        --run_dir alone; with --use_snapshot, RUN/controller/snapshot/code.tar.gz.
Output: each episode's return on stdout and in RUN/play/returns.json; with --record_file, a video
        (.mp4, or .gif) in RUN/play/ (a relative name) or at the path given; RUN/play/DONE.

Only a play of the trained controller in the real env (what the pipeline's play stage runs, with
any --num_episodes or --record_file) is the stage: it writes returns.json, DONE and snapshot/.
--dream and --policy=random watch something else: they write RUN/play/returns-dream.json,
returns-random.json or returns-random-dream.json and snapshot-<view>/, and never DONE, so the
stage's result and the config the pipeline compares it with stay as they were.

    python scripts/play.py --run_dir=RUN --num_episodes=2 --record_file=agent.mp4 --alg_render
    python scripts/play.py --run_dir=RUN --dream --record_file=dream.gif --alg_render
    python scripts/play.py --run_dir=RUN --use_snapshot --record_file=archived.mp4

--alg_render draws the panels (V's reconstruction, M's predicted next frame, z mean +- sigma, the
action within its bounds, M's hidden state, the return so far); --render shows a window (a virtual
display on a headless node); --dream plays inside M instead of the real env; --use_snapshot re-runs
this command with the code archived when the controller was trained, in a subprocess.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import flags

from wm.infra import cli, snapshot
from wm.stages import play

_NUM_EPISODES = flags.DEFINE_integer('num_episodes', None, 'Episodes to play (default: '
                                     'config play.num_episodes).', lower_bound=1)
_RECORD_FILE = flags.DEFINE_string('record_file', None, 'Write a video here (.mp4 or .gif); '
                                   'a relative path is inside RUN/play/.')
_RENDER = flags.DEFINE_bool('render', False, 'Show a window (a virtual display when headless).')
_ALG_RENDER = flags.DEFINE_bool('alg_render', False, 'Draw the panels beside every frame.')
_DREAM = flags.DEFINE_bool('dream', False, 'Play inside the world model instead of the real env.')
_USE_SNAPSHOT = flags.DEFINE_bool('use_snapshot', False, 'Replay with the code archived by the '
                                  'controller stage (RUN/controller/snapshot), not this code.')
_POLICY = flags.DEFINE_enum('policy', 'controller', ['controller', 'random'],
                            'Who acts: the trained controller, or the random data policy '
                            '(config collect.policy).')


def options() -> play.Options:
  return play.Options(
      num_episodes=_NUM_EPISODES.value, record_file=_RECORD_FILE.value, render=_RENDER.value,
      alg_render=_ALG_RENDER.value, dream=_DREAM.value, use_snapshot=_USE_SNAPSHOT.value,
      policy=_POLICY.value)


def main(stage: cli.Stage) -> None:
  play.run(stage, options())


if __name__ == '__main__':
  cli.run('play', main, snapshot_name=lambda: snapshot.folder(options().view))
