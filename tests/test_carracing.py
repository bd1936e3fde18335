"""The fast CarRacing renderer draws the same frames and gives the same rewards."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wm import envs
from wm.config import Config, EnvConfig, validate
from wm.errors import ConfigError


def lockstep(first: envs.PixelEnv, second: envs.PixelEnv, seed: int, steps: int):
  """Steps both envs with the same random actions, checks their rewards agree, yields frames."""
  rng = np.random.default_rng(seed)
  first.reset(seed=seed), second.reset(seed=seed)
  for _ in range(steps):
    action = rng.uniform([-1, 0, 0], [1, 1, 0.2]).astype(np.float32)
    (a, ra, ta, _), (b, rb, tb, _) = first.step(action), second.step(action)
    assert (ra, ta) == (rb, tb)
    yield a, b


def test_fast_render_matches_gymnasiums_renderer():
  fast = envs.make(EnvConfig(max_steps=200, fast_render=True, crop_dashboard=False))
  slow = envs.make(EnvConfig(max_steps=200, fast_render=False, crop_dashboard=False))
  assert type(fast.env.unwrapped).__name__ == 'FastCarRacing'
  assert type(slow.env.unwrapped).__name__ == 'CarRacing'
  differing = []
  for a, b in lockstep(fast, slow, seed=11, steps=120):
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 16, diff.max()
    differing.append((diff > 0).mean())
  assert np.mean(differing) < 0.02, np.mean(differing)
  assert a.std() > 10  # a real picture, not a blank one


def test_action_repeat_is_k_frames_with_the_same_action():
  # One step with action_repeat=4 is four plain steps: the same last frame, the rewards summed,
  # though the three frames in between were never drawn.
  plain = envs.make(EnvConfig(max_steps=200, action_repeat=1))
  repeat = envs.make(EnvConfig(max_steps=200, action_repeat=4))
  rng = np.random.default_rng(1)
  a, b = plain.reset(seed=5), repeat.reset(seed=5)
  total_plain = total_repeat = 0.0
  for _ in range(30):
    action = rng.uniform([-1, 0, 0], [1, 1, 0.1]).astype(np.float32)
    for _ in range(4):
      a, reward, _, _ = plain.step(action)
      total_plain += reward
    b, reward, _, _ = repeat.step(action)
    total_repeat += reward
    np.testing.assert_array_equal(a, b)
  assert abs(total_plain - total_repeat) < 1e-6
  assert total_plain > -12  # it drove over new tiles, so rewards were really summed


def test_action_repeat_ending_between_drawn_frames_draws_the_last_one():
  # max_steps=10 with repeat 4: the third agent step is cut after 2 frames, and its frame is drawn.
  config = EnvConfig(max_steps=10, action_repeat=4)
  assert config.agent_steps() == 3
  plain, repeat = envs.make(EnvConfig(max_steps=10)), envs.make(config)
  plain.reset(seed=2), repeat.reset(seed=2)
  action = np.array([0.3, 1.0, 0.0], np.float32)
  for _ in range(10):
    a, _, _, truncated_plain = plain.step(action)
  for step in range(3):
    b, _, _, truncated = repeat.step(action)
    assert truncated == (step == 2)
  assert truncated_plain
  np.testing.assert_array_equal(a, b)


def test_scaled_drawing_is_the_same_scene_with_fewer_pixels():
  # env.render_scale=0.25 draws the observation on a 250x200 window instead of 1000x800: the
  # same rewards, and frames that differ only where anti-aliased edges fall.
  full = envs.make(EnvConfig(max_steps=200, crop_dashboard=False, frame_size=96))
  small = envs.make(EnvConfig(max_steps=200, crop_dashboard=False, frame_size=96,
                              render_scale=0.25))
  assert small.env.unwrapped.render_scale == 0.25
  mean_diffs = []
  for a, b in lockstep(full, small, seed=4, steps=100):
    road_a, road_b = a[:-12].astype(int), b[:-12].astype(int)  # the view above the dashboard
    mean_diffs.append(np.abs(road_a - road_b).mean())
  assert np.mean(mean_diffs) < 1.0, np.mean(mean_diffs)  # of 255
  assert max(mean_diffs) < 3.0, max(mean_diffs)
  assert b.std() > 10
  # Another scene would be far off: the frame upside down differs by much more.
  assert np.abs(road_a - road_a[::-1]).mean() > 5


def test_render_scale_is_checked():
  config = Config()
  config.env.render_scale = 1.5
  with pytest.raises(ConfigError, match=r'env.render_scale=1.5 must be in \(0, 1\]'):
    validate(config)
  config.env.render_scale, config.env.fast_render = 0.5, False
  with pytest.raises(ConfigError, match='needs env.fast_render=True'):
    validate(config)


def test_scaled_drawing_survives_pygame_quit_by_an_earlier_env():
  # Closing a classic-control env calls pygame.quit(), which invalidates every font made before
  # it; the scaled drawing's reward counter must load its font again (gymnasium's check_env also
  # makes and closes envs of its own).
  first = envs.make(EnvConfig(max_steps=20, render_scale=0.25))
  first.reset(seed=0)
  first.close()
  pendulum = envs.make(EnvConfig(name='Pendulum-v1', max_steps=20))
  pendulum.reset(seed=0)
  pendulum.close()
  second = envs.make(EnvConfig(max_steps=20, render_scale=0.25))
  frame = second.reset(seed=0)
  frame, *_ = second.step(np.array([0.0, 1.0, 0.0], np.float32))
  assert frame.std() > 10
  check_env(second.env.unwrapped, skip_render_check=True)
  second.close()
