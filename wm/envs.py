"""Environments: a registry, pixel frames of frame_size x frame_size x 3 uint8, and a pre-check.

Any gymnasium environment that renders `rgb_array` frames works: its `EnvSpec` says whether the
frame is the observation itself (CarRacing) or comes from `env.render()` (classic control), and how
many dashboard rows its frame has at the bottom. Adding an environment is one registry entry.

CarRacing frames follow the paper: the 12-row dashboard at the bottom of the 96x96 frame is cut
off (`env.crop_dashboard`, default on) and the 84x96 road view is resized to 64x64 (bilinear).

With `env.action_repeat` k > 1 one `PixelEnv.step` is k env frames with the same action: the
rewards are summed, the episode may end on any of them, and only the last frame is returned
(CarRacing with `fast_render` does not even draw the others, see wm/carracing.py). Everything
downstream (rollouts, V, M, the dream, the controller) then lives at the agent's rate; an episode
is `EnvConfig.agent_steps()` agent steps.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

from wm import carracing
from wm.config import Config, EnvConfig
from wm.errors import ConfigError, UserError


@dataclasses.dataclass(frozen=True)
class EnvSpec:
  gym_id: str  # gymnasium id passed to gym.make
  pixels_from: str  # 'observation' (the observation is the frame) or 'render' (env.render())
  dashboard_rows: int = 0  # rows of instruments at the bottom of the frame
  make_kwargs: tuple[tuple[str, Any], ...] = ()  # extra keyword arguments for gym.make


REGISTRY: dict[str, EnvSpec] = {
    'CarRacing-v3': EnvSpec('CarRacing-v3', 'observation', dashboard_rows=12),
    'CartPole-v1': EnvSpec('CartPole-v1', 'render'),
    'Pendulum-v1': EnvSpec('Pendulum-v1', 'render'),
    'MountainCarContinuous-v0': EnvSpec('MountainCarContinuous-v0', 'render'),
}


def spec_for(name: str) -> EnvSpec:
  if name not in REGISTRY:
    raise ConfigError(f'unknown environment env.name={name!r}; registered: {sorted(REGISTRY)} '
                      '(add an EnvSpec to wm/envs.py REGISTRY for another one)')
  return REGISTRY[name]


def action_size(space: gym.Space) -> int:
  """Length of the float32 action vector stored and predicted (one-hot for Discrete)."""
  if isinstance(space, gym.spaces.Box):
    return int(np.prod(space.shape))
  if isinstance(space, gym.spaces.Discrete):
    return int(space.n)
  raise UserError(f'unsupported action space {space}: only Box and Discrete are handled')


class PixelEnv:
  """A gymnasium env whose observations are frame_size^2 x 3 uint8 frames and actions vectors.

  `reset(seed) -> frame`, `step(action_vector) -> (frame, reward, terminated, truncated)`.
  Discrete actions are one-hot vectors (the argmax is sent to the env).
  """

  def __init__(self, config: EnvConfig, render_mode: str | None = None):
    self.config = config
    self.spec = spec_for(config.name)
    kwargs = dict(self.spec.make_kwargs)
    gym_id = self.spec.gym_id
    if config.name.startswith('CarRacing'):
      kwargs['domain_randomize'] = config.domain_randomize
      if config.fast_render:
        gym_id = carracing.register()
        kwargs['render_scale'] = config.render_scale
    if self.spec.pixels_from == 'render':
      render_mode = 'rgb_array'
    _ensure_headless_sdl()
    self.env = gym.make(gym_id, render_mode=render_mode, max_episode_steps=config.max_steps,
                        **kwargs)
    self.action_space = self.env.action_space
    self.action_size = action_size(self.action_space)
    self._discrete = isinstance(self.action_space, gym.spaces.Discrete)
    self._crop = self.spec.dashboard_rows if config.crop_dashboard else 0
    self._repeat = config.action_repeat
    self._fast = getattr(self.env.unwrapped, 'skip_render', None) is not None

  def reset(self, seed: int | None = None) -> np.ndarray:
    obs, _ = self.env.reset(seed=seed)
    if seed is not None:
      self.action_space.seed(seed)
    return self._frame(obs)

  def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
    """`env.action_repeat` frames of `action`: (last frame, reward sum, terminated, truncated)."""
    env_action = self.to_env_action(action)
    total = 0.0
    for i in range(self._repeat):
      last = i == self._repeat - 1
      if self._fast:
        self.env.unwrapped.skip_render = not last
      obs, reward, terminated, truncated, _ = self.env.step(env_action)
      total += float(reward)
      if terminated or truncated:
        break
    if self._fast and not last:  # ended on a frame that was not drawn: draw it now
      self.env.unwrapped.skip_render = False
      obs = self.env.unwrapped._render('state_pixels')  # pylint: disable=protected-access
    return self._frame(obs), total, bool(terminated), bool(truncated)

  def to_env_action(self, action: np.ndarray) -> Any:
    if self._discrete:
      return int(np.argmax(action))
    return np.asarray(action, np.float32).reshape(self.action_space.shape)

  def _frame(self, obs: np.ndarray) -> np.ndarray:
    frame = obs if self.spec.pixels_from == 'observation' else self.env.render()
    return preprocess(frame, self.config.frame_size, self._crop)

  def close(self) -> None:
    self.env.close()


def preprocess(frame: np.ndarray, size: int, crop_bottom: int = 0) -> np.ndarray:
  """Crops `crop_bottom` rows off and resizes to size x size x 3 uint8 (bilinear)."""
  if crop_bottom:
    frame = frame[:-crop_bottom]
  if frame.shape[:2] != (size, size):
    frame = np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))
  return frame


def make(config: EnvConfig, render_mode: str | None = None) -> PixelEnv:
  return PixelEnv(config, render_mode)


def full_size(config: Config) -> Config:
  """`config` with frames drawn at the environment's own resolution (env.render_scale=1)."""
  return dataclasses.replace(config, env=dataclasses.replace(config.env, render_scale=1.0))


def _ensure_headless_sdl() -> None:
  """Settings SDL reads when pygame starts it; called before any env is made in this process.

  pygame (used by the box2d and classic-control renderers) needs no display for rgb_array: the
  dummy drivers stop it from looking for one on a headless node. SDL would also install its own
  SIGTERM/SIGINT handlers (turning them into quit events nobody reads), so a pool worker would
  survive the SIGTERM its pool sends on closing and the parent would wait for it forever. SDL
  reads these when it starts (pygame.display.init), not when pygame is imported.
  """
  os.environ.setdefault('SDL_VIDEODRIVER', 'dummy')
  os.environ.setdefault('SDL_AUDIODRIVER', 'dummy')
  os.environ.setdefault('SDL_NO_SIGNAL_HANDLERS', '1')


def check(config: EnvConfig, seed: int = 0) -> dict[str, Any]:
  """Pre-checks the environment the stages use: `make(config)`, not the plain registered id.

  So the renderer (`env.fast_render`, `render_scale`), the registry's make_kwargs,
  `action_repeat` and the frame preprocessing are all part of it. The gymnasium env inside is
  checked first (spaces, reset/step types, observations in their space, rgb frames), then the
  PixelEnv's frames after a reset and one step. Raises a UserError naming the first problem;
  returns facts about the env on success.
  """
  spec = spec_for(config.name)
  pixel_env = make(config)
  env, where = pixel_env.env, f'environment {config.name}'
  try:
    act_space = env.action_space
    env_frame = _check_gym_env(env, spec, where, seed)
    frames = [pixel_env.reset(seed=seed)]
    frames.append(pixel_env.step(_sample_vector(act_space))[0])
    shape = (config.frame_size, config.frame_size, 3)
    for frame in frames:
      if not (isinstance(frame, np.ndarray) and frame.shape == shape and frame.dtype == np.uint8):
        raise UserError(f'{where}: frames after preprocessing must be {shape} uint8 (env.'
                        f'frame_size={config.frame_size}), got {getattr(frame, "shape", None)} '
                        f'{getattr(frame, "dtype", type(frame))}')
    return {'frame_shape': frames[-1].shape, 'action_size': pixel_env.action_size,
            'action_space': str(act_space), 'env_frame_shape': env_frame.shape,
            'gym_id': env.spec.id if env.spec else None}
  finally:
    pixel_env.close()


def _check_gym_env(env: gym.Env, spec: EnvSpec, where: str, seed: int) -> np.ndarray:
  """Checks a gymnasium env's spaces, reset and one step; returns the frame that step drew."""
  obs_space, act_space = env.observation_space, env.action_space
  if not isinstance(obs_space, gym.Space) or not isinstance(act_space, gym.Space):
    raise UserError(f'{where}: observation_space/action_space are not gymnasium spaces')
  action_size(act_space)
  result = env.reset(seed=seed)
  if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
    raise UserError(f'{where}: reset() must return (observation, info dict), got {type(result)}')
  obs = result[0]
  if not obs_space.contains(obs):
    raise UserError(f'{where}: reset() observation (shape {np.shape(obs)}, dtype '
                    f'{getattr(obs, "dtype", type(obs))}) is outside observation_space '
                    f'{obs_space}')
  act_space.seed(seed)
  step = env.step(act_space.sample())
  if not (isinstance(step, tuple) and len(step) == 5):
    raise UserError(f'{where}: step() must return 5 values (obs, reward, terminated, '
                    f'truncated, info), got {type(step)} of length {len(step)}')
  obs, reward, terminated, truncated, _ = step
  if not obs_space.contains(obs):
    raise UserError(f'{where}: step() observation is outside observation_space {obs_space}')
  if not isinstance(reward, (int, float, np.floating, np.integer)):
    raise UserError(f'{where}: step() reward must be a number, got {type(reward)}')
  for name, flag in (('terminated', terminated), ('truncated', truncated)):
    if not isinstance(flag, (bool, np.bool_)):
      raise UserError(f'{where}: step() {name} must be a bool, got {type(flag)}')
  frame = obs if spec.pixels_from == 'observation' else env.render()
  if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3
          and frame.dtype == np.uint8):
    raise UserError(f'{where}: frames must be HxWx3 uint8 rgb arrays, got '
                    f'{getattr(frame, "shape", None)} {getattr(frame, "dtype", type(frame))}')
  return frame


def _sample_vector(space: gym.Space) -> np.ndarray:
  """A random action as the stages send it: a float32 vector, one-hot for Discrete."""
  if isinstance(space, gym.spaces.Discrete):
    return np.eye(space.n, dtype=np.float32)[space.sample() - space.start]
  return np.asarray(space.sample(), np.float32).ravel()
