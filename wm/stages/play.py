"""Stage play: the trained agent's episodes to watch, with V's and M's panels, a window, videos.

Only the stage's own view, the trained controller in the real environment, marks the stage done
(returns.json, DONE, snapshot/); the dream and the random policy are other views with files of
their own. --use_snapshot replays with the code archived by the controller stage. The episodes
themselves are wm/playback.py's. Inputs, outputs and flags: scripts/play.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile

from wm import artifacts, envs, playback, policies, render, rollouts, video
from wm.config import REPO_ROOT
from wm.errors import UserError
from wm.infra import cli, fileio, snapshot


@dataclasses.dataclass
class Options:
  """What scripts/play.py's flags ask for."""
  num_episodes: int | None = None  # default: config play.num_episodes
  record_file: str | None = None  # a video (.mp4 or .gif); relative: inside RUN/play/
  render: bool = False  # show a window (a virtual display when headless)
  alg_render: bool = False  # draw the panels beside every frame
  dream: bool = False  # play inside M instead of the real env
  use_snapshot: bool = False  # replay with the controller stage's archived code
  policy: str = 'controller'  # controller | random (the data policy, config collect.policy)

  @property
  def view(self) -> str | None:
    """What a play other than the stage's watches: 'dream', 'random' or 'random-dream'; None for
    the stage's own play, the trained controller in the real env (what the pipeline runs)."""
    parts = ['random'] * (self.policy == 'random') + ['dream'] * self.dream
    return '-'.join(parts) or None


def returns_name(view: str | None) -> str:
  """RUN/play/returns.json is the stage's; another view's returns go beside it."""
  return f'returns-{view}.json' if view else 'returns.json'


def run(stage: cli.Stage, options: Options) -> None:
  """The stage: play, show and record episodes; returns.json and DONE (options.view: its own
  returns file, no DONE)."""
  if options.use_snapshot:
    sys.exit(replay_with_snapshot(stage, options.view))
  config = stage.config
  record = options.record_file and os.path.join(stage.dir, options.record_file)
  if record:
    video.check_path(record)
  needs_world = options.policy == 'controller' or options.alg_render or options.dream
  if needs_world:  # fail fast, naming the missing stage, before any model is loaded
    artifacts.require_world_model(stage.run)
  if options.policy == 'controller':
    artifacts.require_controller(stage.run)
  render.enable(options.alg_render)
  with contextlib.ExitStack() as cleanup:
    sinks = []
    if options.render:
      window = playback.Window(f'play: {stage.run.root}')
      cleanup.callback(window.close)
      sinks.append(window)
    env = envs.make(config.env)
    cleanup.callback(env.close)
    world = artifacts.load_models(stage.run) if needs_world else None
    policy = make_policy(stage, options, env, world)
    writer = video.Writer(record, config.play.fps) if record else None
    if writer:
      cleanup.enter_context(writer)  # renamed into place only when every episode finished
      sinks.append(writer.append)
    results = play_episodes(stage, options, env, world, policy, sinks)
  returns = os.path.join(stage.dir, returns_name(options.view))
  fileio.write_json(returns, {
      'dream': options.dream, 'policy': options.policy,
      'returns': [r.ret for r in results], 'steps': [r.steps for r in results],
      'action_mean': [r.action_mean for r in results],
      'action_abs_mean': [r.action_abs_mean for r in results]})
  if record:
    print(f'video: {record} ({writer.frames} frames)', flush=True)
  if options.view is None:
    stage.run.mark_done('play', episodes=len(results), video=record or None)
  else:
    print(f'returns: {returns} (a {options.view} play: the play stage\'s returns.json and DONE, '
          'the controller in the real env, are left as they were)', flush=True)


def play_episodes(stage: cli.Stage, options: Options, env, world, policy,
                  sinks: list) -> list[playback.EpisodeResult]:
  config = stage.config
  start = None
  if options.dream and os.path.exists(artifacts.initial_latents_path(stage.run)):
    start = artifacts.StartLatents.of_run(stage.run, world.encoder.z_size)
  if options.alg_render and not options.dream:
    policy = playback.WorldModelPanels(policy, world, env.action_space, config.seq.temperature)
  results = []
  for index in range(options.num_episodes or config.play.num_episodes):
    seed = rollouts.rollout_seed(config.seed, 1_000_000 + index)  # tracks unseen in training
    if options.dream:
      result = playback.dream_episode(world, start, policy, seed,
                                      config.controller.dream_temperature,
                                      config.env.agent_steps(), env.action_space, sinks,
                                      config.controller.dream_done,
                                      config.controller.dream_done_odds)
    else:
      result = playback.play_episode(env, policy, seed, sinks)
    results.append(result)
    where = ' (dream: rewards predicted by M)' if options.dream else ''
    print(playback.EPISODE_LINE.format(index=index, ret=result.ret, steps=result.steps,
                                       where=where), flush=True)
  return results


def make_policy(stage: cli.Stage, options: Options, env, world) -> policies.Policy:
  if options.policy == 'random':
    return policies.make_random(stage.config.collect, env.action_space)
  return load_controller(stage, world, env)


def load_controller(stage: cli.Stage, world: artifacts.Models, env) -> policies.Policy:
  """The controller stage's best parameters acting through V and M (wm.agent.Agent)."""
  from wm import agent  # pylint: disable=import-outside-toplevel
  from wm.models.controller import Controller  # pylint: disable=import-outside-toplevel
  controller = Controller.from_config(stage.config.controller, world.encoder.z_size, world.seq,
                                      env.action_space)
  params = artifacts.load_params(artifacts.require_controller(stage.run), controller)
  return agent.Agent(agent.WorldModel(world.encoder, world.seq, controller), params)


def replay_with_snapshot(stage: cli.Stage, view: str | None) -> int:
  """Re-runs this command with the controller stage's archived code; returns its exit status.
  Archived code older than Options.view writes returns.json and DONE whatever it plays: after
  a `view`, they are put back as they were."""
  if view is None:
    return replay(stage.run, ())
  kept = [os.path.join(stage.dir, returns_name(None)), stage.run.done_path('play')]
  with restored_after(kept):
    return replay(stage.run, ('--nostore_snapshot',))


@contextlib.contextmanager
def restored_after(paths: list[str]):
  """Restores each of `paths` after the block: its bytes, or its absence."""
  saved = {}
  for path in paths:
    with contextlib.suppress(FileNotFoundError), open(path, 'rb') as f:
      saved[path] = f.read()
  try:
    yield
  finally:
    for path in paths:
      if path in saved:
        fileio.write_bytes(path, saved[path])
      elif os.path.exists(path):
        os.remove(path)


def replay(run, extra: tuple[str, ...]) -> int:
  """Runs scripts/play.py of the controller's code snapshot with this command's flags."""
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
    argv = [a for a in sys.argv[1:] if a.split('=')[0] not in skip] + list(extra)
    print(f'--use_snapshot: replaying with the code archived in {archive}, not the working tree '
          f'(unpacked to {code}; running scripts/play.py from there in a subprocess)', flush=True)
    env = dict(os.environ)
    paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
             if p and os.path.abspath(p) != REPO_ROOT]
    env['PYTHONPATH'] = os.pathsep.join([code] + paths)
    return subprocess.call([sys.executable, script, *argv], env=env)
  finally:
    shutil.rmtree(code, ignore_errors=True)
