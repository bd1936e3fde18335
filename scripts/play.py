"""Stage 'play': watch the trained agent, with V's and M's panels beside the frames, and record it.

Input:  RUN/vae/export (V), RUN/seq/export (M), RUN/controller/ (C's best parameters), all from
        --run_dir alone; with --use_snapshot, RUN/controller/snapshot/code.tar.gz.
Output: each episode's return on stdout and in RUN/play/returns.json; with --record_file, a video
        (.mp4, or .gif) in RUN/play/ (a relative name) or at the path given; RUN/play/DONE.

    python scripts/play.py --run_dir=RUN --num_episodes=2 --record_file=agent.mp4 --alg_render
    python scripts/play.py --run_dir=RUN --dream --record_file=dream.gif --alg_render
    python scripts/play.py --run_dir=RUN --use_snapshot --record_file=archived.mp4

--alg_render draws the panels (V's reconstruction, M's predicted next frame, z mean +- sigma, the
action within its bounds, M's hidden state, the return so far); --render shows a window (a virtual
display on a headless node); --dream plays inside M instead of the real env; --use_snapshot re-runs
this command with the code archived when the controller was trained, in a subprocess.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from wm import cli, envs, fileio, policies, render, rollouts, snapshot, video
from wm import play as play_lib
from wm.config import REPO_ROOT
from wm.errors import UserError

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


def main(stage: cli.Stage) -> None:
  if _USE_SNAPSHOT.value:
    sys.exit(replay_with_snapshot(stage.run))
  config = stage.config
  record = _RECORD_FILE.value and os.path.join(stage.dir, _RECORD_FILE.value)
  if record:
    video.check_path(record)
  needs_world = _POLICY.value == 'controller' or _ALG_RENDER.value or _DREAM.value
  if needs_world:  # fail fast, naming the missing stage, before any model is loaded
    play_lib.require_world_model(stage.run)
  if _POLICY.value == 'controller':
    play_lib.require_controller(stage.run)
  render.enable(_ALG_RENDER.value)
  with contextlib.ExitStack() as cleanup:
    sinks = []
    if _RENDER.value:
      window = play_lib.Window(f'play: {stage.run.root}')
      cleanup.callback(window.close)
      sinks.append(window)
    env = envs.make(config.env)
    cleanup.callback(env.close)
    world = play_lib.load_world_model(stage.run) if needs_world else None
    policy = make_policy(stage, env, world)
    writer = video.Writer(record, config.play.fps) if record else None
    if writer:
      cleanup.enter_context(writer)  # renamed into place only when every episode finished
      sinks.append(writer.append)
    results = play_episodes(config, env, world, policy, sinks)
  fileio.write_json(os.path.join(stage.dir, 'returns.json'), {
      'dream': _DREAM.value, 'policy': _POLICY.value,
      'returns': [r.ret for r in results], 'steps': [r.steps for r in results]})
  if record:
    print(f'video: {record} ({writer.frames} frames)', flush=True)
  stage.run.mark_done('play', episodes=len(results), video=record or None)


def play_episodes(config, env, world, policy, sinks) -> list[play_lib.EpisodeResult]:
  if _ALG_RENDER.value and not _DREAM.value:
    policy = play_lib.WorldModelPanels(policy, world, env.action_space, config.seq.temperature)
  results = []
  for index in range(_NUM_EPISODES.value or config.play.num_episodes):
    seed = rollouts.rollout_seed(config.seed, 1_000_000 + index)  # tracks unseen in training
    if _DREAM.value:
      result = play_lib.dream_episode(world, policy, seed, config.controller.dream_temperature,
                                      config.env.agent_steps(), env.action_space, sinks)
    else:
      result = play_lib.play_episode(env, policy, seed, sinks)
    results.append(result)
    where = ' (dream: rewards predicted by M)' if _DREAM.value else ''
    print(play_lib.EPISODE_LINE.format(index=index, ret=result.ret, steps=result.steps,
                                       where=where), flush=True)
  return results


def make_policy(stage: cli.Stage, env, world) -> policies.Policy:
  if _POLICY.value == 'random':
    return policies.make_random(stage.config.collect, env.action_space)
  return play_lib.load_controller(stage.run, stage.config, world, env)


def replay_with_snapshot(run) -> int:
  """Re-runs this command with the controller stage's archived code; returns its exit status."""
  snapshot_dir = os.path.join(run.stage_dir('controller'), 'snapshot')
  archive = os.path.join(snapshot_dir, 'code.tar.gz')
  if not os.path.exists(archive):
    raise UserError(f'--use_snapshot: {run.root} has no code snapshot of the controller stage '
                    f'({archive} is missing; the controller was not trained, or trained with '
                    f'--nostore_snapshot); drop --use_snapshot to play with the current code')
  code = tempfile.mkdtemp(prefix='wm-snapshot-')
  try:
    snapshot.extract_code(snapshot_dir, code)
    script = os.path.join(code, 'scripts', 'play.py')
    if not os.path.exists(script):
      raise UserError(f'--use_snapshot: the archived code in {archive} has no scripts/play.py '
                      '(it predates play); drop --use_snapshot')
    skip = ('--use_snapshot', '--nouse_snapshot')
    argv = [a for a in sys.argv[1:] if a.split('=')[0] not in skip]
    print(f'--use_snapshot: replaying with the code archived in {archive}, not the working tree '
          f'(unpacked to {code}; running scripts/play.py from there in a subprocess)', flush=True)
    env = dict(os.environ)
    paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
             if p and os.path.abspath(p) != REPO_ROOT]
    env['PYTHONPATH'] = os.pathsep.join([code] + paths)
    return subprocess.call([sys.executable, script, *argv], env=env)
  finally:
    shutil.rmtree(code, ignore_errors=True)


if __name__ == '__main__':
  cli.run('play', main)
