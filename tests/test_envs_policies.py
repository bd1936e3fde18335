"""Environments give 64x64x3 frames (CarRacing and a classic-control env); the pre-check catches
broken envs; random policies stay in bounds and are reproducible."""

import os
import re
import signal
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from wm import envs, policies
from wm.config import CollectConfig, EnvConfig
from wm.errors import ConfigError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_carracing_frames_are_cropped_and_resized():
  env = envs.make(EnvConfig(max_steps=5))
  frame = env.reset(seed=3)
  assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
  frame, reward, terminated, truncated = env.step(np.array([0.0, 1.0, 0.0], np.float32))
  assert frame.shape == (64, 64, 3) and isinstance(reward, float)
  # Without cropping, the black dashboard shows in the bottom rows.
  raw = envs.make(EnvConfig(max_steps=5, crop_dashboard=False))
  uncropped = raw.reset(seed=3)
  assert uncropped[-3:].mean() < 40 < frame[-3:].mean()


def test_classic_control_env_renders_to_pixels():
  env = envs.make(EnvConfig(name='CartPole-v1', max_steps=10))
  frame = env.reset(seed=0)
  assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
  assert env.action_size == 2
  frame, *_ = env.step(np.array([0.0, 1.0], np.float32))
  assert frame.shape == (64, 64, 3)


def test_check_reports_facts_and_refuses_unknown_env():
  facts = envs.check(EnvConfig(name='Pendulum-v1'))
  assert facts['action_size'] == 1 and facts['frame_shape'][2] == 3
  with pytest.raises(ConfigError, match='unknown environment'):
    envs.check(EnvConfig(name='NoSuchEnv-v0'))


SIGTERM_AFTER_RENDERING = """
import os, signal, time
import numpy as np
from wm import envs
from wm.config import EnvConfig
env = envs.make(EnvConfig(name='Pendulum-v1', max_steps=10))
env.reset(seed=0)
env.step(np.zeros(1, np.float32))  # the renderer has started pygame's display (SDL's dummy one)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(10)
print('survived SIGTERM')
"""


def test_a_process_that_rendered_still_dies_of_sigterm():
  # SDL installs SIGTERM/SIGINT handlers of its own unless told not to; a pool worker would then
  # survive the SIGTERM its pool sends on closing, and the parent would wait for it forever.
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop('SDL_NO_SIGNAL_HANDLERS', None)  # set in this process by the envs made before
  result = subprocess.run([sys.executable, '-c', SIGTERM_AFTER_RENDERING], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
  assert result.returncode == -signal.SIGTERM, (result.returncode, result.stdout,
                                                result.stderr[-3000:])


class _BadObservationEnv(gym.Env):
  observation_space = gym.spaces.Box(0, 1, (2,), np.float32)
  action_space = gym.spaces.Discrete(2)

  def __init__(self, render_mode=None):
    self.render_mode = render_mode

  def reset(self, seed=None, options=None):
    return np.array([5.0, 5.0], np.float32), {}

  def step(self, action):
    return np.zeros(2, np.float32), 0.0, False, False, {}


def test_check_names_an_observation_outside_its_space(monkeypatch):
  gym.register('BadObs-v0', entry_point=_BadObservationEnv)
  monkeypatch.setitem(envs.REGISTRY, 'BadObs-v0', envs.EnvSpec('BadObs-v0', 'observation'))
  with pytest.raises(UserError, match='outside observation_space'):
    envs.check(EnvConfig(name='BadObs-v0'))


class _FrameEnv(gym.Env):
  """8x8 frames as observations; with the make keyword `bad=True` they leave their space."""
  observation_space = gym.spaces.Box(0, 100, (8, 8, 3), np.uint8)
  action_space = gym.spaces.Discrete(2)

  def __init__(self, render_mode=None, bad=False):
    self.render_mode, self.bad = render_mode, bad

  def reset(self, seed=None, options=None):
    super().reset(seed=seed)
    return np.full((8, 8, 3), 200 if self.bad else 50, np.uint8), {}

  def step(self, action):
    return np.full((8, 8, 3), 50, np.uint8), 0.0, False, False, {}


def test_check_makes_the_env_as_the_stages_do(monkeypatch):
  # The registry's make_kwargs are part of the env the stages use: the check must pass them too.
  gym.register('FrameEnv-v0', entry_point=_FrameEnv)
  monkeypatch.setitem(envs.REGISTRY, 'FrameEnv-v0', envs.EnvSpec('FrameEnv-v0', 'observation'))
  assert envs.check(EnvConfig(name='FrameEnv-v0'))['frame_shape'] == (64, 64, 3)
  monkeypatch.setitem(envs.REGISTRY, 'FrameEnv-v0', envs.EnvSpec(
      'FrameEnv-v0', 'observation', make_kwargs=(('bad', True),)))
  with pytest.raises(UserError, match=r'environment FrameEnv-v0: reset\(\) observation \(shape '
                     r'\(8, 8, 3\), dtype uint8\) is outside observation_space'):
    envs.check(EnvConfig(name='FrameEnv-v0'))


def test_make_kwargs_reach_the_env_and_one_it_refuses_is_named(monkeypatch):
  gym.register('FrameEnv-v0', entry_point=_FrameEnv)
  monkeypatch.setitem(envs.REGISTRY, 'FrameEnv-v0', envs.EnvSpec('FrameEnv-v0', 'observation'))
  with pytest.raises(UserError, match=r'reset\(\) observation .* is outside observation_space'):
    envs.check(EnvConfig(name='FrameEnv-v0', make_kwargs='bad=True'))
  car = envs.make(EnvConfig(max_steps=5, make_kwargs='lap_complete_percent=0.5'))
  try:
    assert car.env.unwrapped.lap_complete_percent == 0.5
  finally:
    car.close()
  with pytest.raises(ConfigError, match=re.escape(
      "could not be made with env.make_kwargs='laps=2' (TypeError: ")):
    envs.check_make_kwargs(EnvConfig(make_kwargs='laps=2'))


def test_check_reports_the_configured_env():
  # The fast renderer at a quarter of the window, acting every 3rd frame, frames of 32x32: the
  # facts are those of the frames and actions the stages will see.
  config = EnvConfig(max_steps=20, frame_size=32, render_scale=0.25, action_repeat=3)
  facts = envs.check(config)
  assert facts['frame_shape'] == (32, 32, 3), facts
  assert facts['env_frame_shape'] == (96, 96, 3), facts
  assert facts['gym_id'] == 'wm/FastCarRacing-v3', facts
  assert facts['action_size'] == 3, facts
  # A setting that only the configured env refuses (validate() would too, but check() is called
  # with the EnvConfig alone).
  with pytest.raises(ValueError, match=r'render_scale must be in \(0, 1\], got 1.5'):
    envs.check(EnvConfig(max_steps=20, render_scale=1.5))


BOX = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))


@pytest.mark.parametrize('name', ['uniform', 'brownian', 'held'])
def test_random_policies_stay_in_bounds_and_repeat_with_the_seed(name):
  policy = policies.make_random(CollectConfig(policy=name), BOX)
  def actions(seed):
    policy.reset(seed)
    return np.stack([policy.act(None).action for _ in range(50)])
  a, b, c = actions(1), actions(1), actions(2)
  assert a.dtype == np.float32 and a.shape == (50, 3)
  assert (a >= BOX.low).all() and (a <= BOX.high).all()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_brownian_is_smooth_and_held_holds():
  brownian = policies.make_random(CollectConfig(policy='brownian', brownian_sigma=0.05), BOX)
  uniform = policies.make_random(CollectConfig(policy='uniform'), BOX)
  def mean_change(policy):
    policy.reset(0)
    a = np.stack([policy.act(None).action for _ in range(200)])
    return np.abs(np.diff(a, axis=0)).mean()
  assert mean_change(brownian) < 0.3 * mean_change(uniform)
  held = policies.make_random(CollectConfig(policy='held', hold_min=4, hold_max=4), BOX)
  held.reset(0)
  a = np.stack([held.act(None).action for _ in range(12)])
  assert (a[0] == a[3]).all() and (a[4] == a[7]).all() and not (a[3] == a[4]).all()


def test_discrete_actions_are_one_hot():
  policy = policies.make_random(CollectConfig(policy='brownian'), gym.spaces.Discrete(3))
  policy.reset(0)
  action = policy.act(None).action
  assert sorted(action.tolist()) == [0.0, 0.0, 1.0]
