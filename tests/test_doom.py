"""VizDoom TakeCover (configs/doom.py): a dict observation, an inferred environment, and the
debug preset through every stage with the real game."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, child_pids, process_alive, script_env
from wm import config as config_lib
from wm import envs
from wm.errors import ConfigError
from wm.infra import runs

DOOM = 'configs/doom.py:debug'


def test_environments_are_inferred_from_their_spaces():
  doom = envs.spec_for('VizdoomTakeCover-v1')  # registered by importing vizdoom's wrapper
  assert (doom.pixels_from, doom.frame_key, doom.inferred) == ('observation', 'screen', True)
  cartpole = envs.spec_for('CartPole-v1')
  assert (cartpole.pixels_from, cartpole.frame_key, cartpole.inferred) == ('render', None, True)
  car = envs.spec_for('CarRacing-v3')  # its dashboard rows cannot be inferred: registered
  assert (car.pixels_from, car.dashboard_rows, car.inferred) == ('observation', 12, False)
  with pytest.raises(ConfigError, match=r"did you mean \['CartPole-v1'"):
    envs.spec_for('CartPol-v1')


def test_doom_frames_come_from_the_screen_key_and_the_precheck_says_so():
  config = config_lib.load(DOOM)
  env = envs.make(config.env)
  try:
    frame = env.reset(seed=3)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert env.action_size == 3  # Discrete(3) as a one-hot vector
    again, reward, terminated, truncated = env.step(np.eye(3, dtype=np.float32)[1])
    assert again.shape == (64, 64, 3) and reward == 1.0 and not truncated
    assert frame.std() > 5  # a real image, not a blank one
  finally:
    env.close()
  facts = envs.check(config.env, seed=0)
  assert facts['frames_from'] == "observation['screen'] (inferred)"
  assert facts['env_frame_shape'] == (240, 320, 3)


def test_doom_takes_its_game_settings_from_make_kwargs():
  # VizDoom reads gym.make's extra arguments as game settings: a quarter of the pixels to draw.
  config = config_lib.load(DOOM)
  config.env.make_kwargs = 'screen_resolution=RES_160X120'
  config_lib.validate(config)
  facts = envs.check(config.env, seed=0)
  assert facts['env_frame_shape'] == (120, 160, 3) and facts['frame_shape'] == (64, 64, 3)
  assert facts['make_kwargs'] == {'screen_resolution': 'RES_160X120'}
  # VizDoom skips a setting it does not know with a warning, not an error: validate() asks.
  config.env.make_kwargs = 'screen_resolution=RES_999X1'
  with pytest.raises(ConfigError, match=re.escape("did not take every setting of "
                                                  "env.make_kwargs='screen_resolution=RES_999X1'")):
    config_lib.validate(config)


ORPHAN_PROBE = """
import os, sys, time
import numpy as np
from wm import config as config_lib, envs
env = envs.make(config_lib.load(sys.argv[1]).env)
env.reset(seed=0)
env.step(np.eye(3, dtype=np.float32)[0])
print(os.getpid(), flush=True)
time.sleep(120)
"""


def test_a_killed_process_takes_its_vizdoom_engine_with_it():
  """VizDoom plays each game in an engine process of its own; a stage or pool worker killed with
  SIGKILL used to leave it running forever (wm/vizdoom_engine.sh)."""
  probe = subprocess.Popen([sys.executable, '-c', ORPHAN_PROBE, DOOM], cwd=REPO,
                           env=script_env(), stdout=subprocess.PIPE, text=True)
  engines = []
  try:
    pid = int(probe.stdout.readline())
    engines = child_pids(pid)  # the engine VizDoom started for the game
    assert engines, f'no engine process found under the game\'s owner {pid}'
    probe.kill()
    probe.wait(10)
    deadline = time.monotonic() + 10
    while any(map(process_alive, engines)) and time.monotonic() < deadline:
      time.sleep(0.2)
    assert not any(map(process_alive, engines)), f'engines {engines} outlived their killed owner'
  finally:
    probe.kill()
    for engine in filter(process_alive, engines):  # a failed run leaves no engine behind either
      os.kill(engine, signal.SIGKILL)


def test_the_engines_directory_exists_before_any_engine_looks(tmp_path, monkeypatch):
  """VizDoom's engine checks for _vizdoom in its cwd and then creates it: two started at once (a
  stage's workers in a fresh directory) raced there, and the loser crashed its worker with
  SIGSEGV. Making the env creates it first, before the engine starts (at the first reset)."""
  monkeypatch.setattr(envs, 'engine_home', lambda: str(tmp_path / 'home'))
  env = envs.make(config_lib.load(DOOM).env)
  try:
    assert (tmp_path / 'home' / envs.ENGINE_FILES).is_dir()
    assert not env.env.unwrapped.game.is_running()  # no engine yet: the directory came first
  finally:
    env.close()


def test_the_engine_keeps_its_files_out_of_the_callers_directory(tmp_path, monkeypatch):
  """A Doom stage started from a checkout used to leave the engine's _vizdoom.ini and _vizdoom/
  there; the engine now runs in envs.engine_home() (wm/vizdoom_engine.sh)."""
  workdir, home = tmp_path / 'work', tmp_path / 'home'
  workdir.mkdir()
  monkeypatch.chdir(workdir)
  monkeypatch.setattr(envs, 'engine_home', lambda: str(home))
  env = envs.make(config_lib.load(DOOM).env)
  try:
    env.reset(seed=0)
    env.step(np.eye(3, dtype=np.float32)[0])
  finally:
    env.close()
  assert not list(workdir.iterdir()), f'the engine wrote {sorted(os.listdir(workdir))} into the cwd'
  assert (home / '_vizdoom.ini').is_file(), f'no _vizdoom.ini in {home}: {os.listdir(home)}'


@pytest.mark.slow
def test_debug_doom_pipeline_runs_every_stage(tmp_path):
  # With the run's own judge M (seq.judges=1) and the worst world's score, as docs/results.md's
  # best Doom command.
  run_dir = str(tmp_path / 'doom')
  result = subprocess.run([sys.executable, '-m', 'wm', f'--run_dir={run_dir}', f'--config={DOOM}',
                           '--parallelism=2', '--config.seq.judges=1',
                           '--config.controller.eval_episodes=2',
                           '--config.controller.dream_eval_episodes=4',
                           '--config.controller.dream_fitness=worst'],
                          cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  run = runs.Run(run_dir)
  assert all(run.is_done(stage) for stage in runs.STAGE_DIRS), result.stdout[-2000:]
  with open(os.path.join(run_dir, 'evaluate', 'result.json')) as f:
    scored = json.load(f)
  assert scored['env'] == 'VizdoomTakeCover-v1' and scored['episodes'] == 4
  assert all(r >= 1 for r in scored['returns'])  # every tic survived earns 1
  limit = config_lib.load_json(os.path.join(run_dir, 'config.json')).env.agent_steps()
  for steps, ended in zip(scored['steps'], scored['ended']):  # died early, or survived the limit
    assert (ended and steps < limit) or (not ended and steps == limit), scored
  assert os.path.getsize(os.path.join(run_dir, 'play', 'agent.mp4')) > 0
  assert run.redirected('seq', os.path.join(run_dir, 'seq', 'judges', '1')).is_done('seq')
  # controller.keep=dream: the kept controller's score is a dream evaluation's (the worst M's
  # mean, as the search ranks), never the game's
  with open(os.path.join(run_dir, 'controller', 'DONE')) as f:
    kept = json.load(f)['best_score']
  with open(os.path.join(run_dir, 'controller', 'history.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  dreamt = {r[k] for r in rows for k in ('dream_eval_score', 'centroid_dream_eval_score')
            if r.get(k) is not None}
  assert kept in dreamt, (kept, rows)
  # controller.dream_eval_episodes: the dream's evaluations play 4 episodes, the game's 2
  assert {r['dream_eval_episodes'] for r in rows if 'eval_mean' in r} == {4}, rows
