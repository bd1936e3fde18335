"""Environments: a registry, pixel frames of frame_size x frame_size x 3 uint8, and a pre-check.

Any gymnasium environment with pixels works without a code edit: its `EnvSpec` (where the frame
comes from: the observation itself as in CarRacing, one key of a dict observation as VizDoom's
'screen', or `env.render()` as in classic control) is inferred from its observation space and
render modes. REGISTRY keeps only what cannot be inferred (CarRacing's 12 dashboard rows), and
PLUGINS the modules that register ids when imported (VizDoom's).

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
import difflib
import importlib
import os
import tempfile
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
  pixels_from: str  # 'observation' (the observation, or one key of it, is the frame) | 'render'
  dashboard_rows: int = 0  # rows of instruments at the bottom of the frame
  make_kwargs: tuple[tuple[str, Any], ...] = ()  # extra keyword arguments for gym.make
  frame_key: str | None = None  # a dict observation: the key whose value is the frame
  inferred: bool = False  # read from the environment itself (see infer_spec), not REGISTRY


# Only what cannot be read from an environment: CarRacing's dashboard rows. Any other gymnasium
# id is inferred (infer_spec); an entry here overrides inference.
REGISTRY: dict[str, EnvSpec] = {
    'CarRacing-v3': EnvSpec('CarRacing-v3', 'observation', dashboard_rows=12),
}
# Modules that register gymnasium ids when imported, by id prefix (gym.make's own 'module:Id'
# form works too, e.g. env.name=mypackage.envs:MyEnv-v0).
PLUGINS = {'Vizdoom': 'vizdoom.gymnasium_wrapper'}
_INFERRED: dict[str, EnvSpec] = {}


def spec_for(name: str) -> EnvSpec:
  """The registered spec of `name`, else one inferred from the environment (cached)."""
  if name in REGISTRY:
    return REGISTRY[name]
  if name not in _INFERRED:
    _INFERRED[name] = infer_spec(name)
  return _INFERRED[name]


def infer_spec(name: str) -> EnvSpec:
  """Reads where an environment's frames come from: a uint8 HxWx3 observation, such a key of a
  dict observation, or `render()` in rgb_array mode. Raises a ConfigError when it has none."""
  gym_id = _registered_id(name)
  _ensure_headless_sdl()
  try:
    env = gym.make(gym_id)
  except Exception as e:  # an engine that cannot start, a missing scenario file, ...
    raise ConfigError(f'environment env.name={name!r} could not be made ({type(e).__name__}: '
                      f'{str(e).strip()[:300]})') from None
  try:
    space, modes = env.observation_space, env.metadata.get('render_modes', [])
  finally:
    env.close()
  if _is_frame_space(space):
    return EnvSpec(gym_id, 'observation', inferred=True)
  if isinstance(space, gym.spaces.Dict):
    keys = [k for k, sub in space.spaces.items() if _is_frame_space(sub)]
    if len(keys) == 1:
      return EnvSpec(gym_id, 'observation', frame_key=keys[0], inferred=True)
  if 'rgb_array' in modes:
    return EnvSpec(gym_id, 'render', inferred=True)
  raise ConfigError(f'environment env.name={name!r} has no pixels: its observation space is '
                    f'{space} and it cannot render rgb_array (render modes {modes}); add an '
                    'EnvSpec to wm/envs.py REGISTRY saying where its frames come from')


def _registered_id(name: str) -> str:
  """`name` as gym.make takes it, importing the module that registers it first."""
  module = next((m for prefix, m in PLUGINS.items() if name.startswith(prefix)), None)
  if module:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ConfigError(f'environment env.name={name!r} needs the {module.split(".")[0]!r} '
                        f'package ({e}); pip install -r requirements.txt') from None
  try:
    gym.spec(name)
  except Exception:  # gymnasium raises NameNotFound, VersionNotFound, ModuleNotFoundError...
    close = difflib.get_close_matches(name, list(gym.registry), n=3)
    raise ConfigError(f'unknown environment env.name={name!r}: not a registered gymnasium id'
                      f'{f" (did you mean {close}?)" if close else ""}; registered here: '
                      f'{sorted(REGISTRY)}, plus any gymnasium id that has pixels') from None
  return name


def _is_frame_space(space: gym.Space) -> bool:
  return (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8
          and len(space.shape) == 3 and space.shape[2] == 3)


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
    kwargs = {**dict(self.spec.make_kwargs), **config.gym_kwargs()}
    gym_id = self.spec.gym_id
    if config.name.startswith('CarRacing'):
      kwargs['domain_randomize'] = config.domain_randomize
      if config.fast_render:
        gym_id = carracing.register()
        kwargs['render_scale'] = config.render_scale
    if self.spec.pixels_from == 'render':
      render_mode = 'rgb_array'
    _ensure_headless_sdl()
    try:
      self.env = gym.make(gym_id, render_mode=render_mode, max_episode_steps=config.max_steps,
                          **kwargs)
    except Exception as e:  # pylint: disable=broad-except  (any environment's own error)
      if not config.make_kwargs:
        raise
      raise ConfigError(f'environment env.name={config.name!r} could not be made with '
                        f'env.make_kwargs={config.make_kwargs!r} ({type(e).__name__}: '
                        f'{str(e).strip()[:300]}); fix or drop the field') from None
    prepare_vizdoom(self.env)
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

  def _frame(self, obs: Any) -> np.ndarray:
    if self.spec.pixels_from == 'render':
      frame = self.env.render()
    else:
      frame = obs[self.spec.frame_key] if self.spec.frame_key else obs
    return preprocess(frame, self.config.frame_size, self._crop)

  def close(self) -> None:
    self.env.close()


ENGINE_FILES = '_vizdoom'  # where a VizDoom engine keeps its files, relative to its cwd
ENGINE_WRAPPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vizdoom_engine.sh')


def engine_home() -> str:
  """The working directory of the engines wm/vizdoom_engine.sh starts: their _vizdoom.ini and
  _vizdoom/ go there, not into the directory a stage was started from. Under $TMPDIR, so
  node-local on a cluster (SLURM jobs often get a TMPDIR of their own). Asked for when a game is
  made, not at import: finding the temporary directory writes a probe file."""
  return os.path.join(tempfile.gettempdir(), f'wm-vizdoom-{os.getuid()}')


def prepare_vizdoom(env: gym.Env) -> None:
  """Readies a VizDoom env's engine before it starts (at the env's first reset): its process tied
  to this one, its files' directory made. Other envs, and a running engine, are left as they
  are."""
  game = getattr(env.unwrapped, 'game', None)
  if game is None or not hasattr(game, 'set_vizdoom_path') or game.is_running():
    return
  home = engine_home()
  make_engine_files_dir(home if tie_engine_to_owner(game, home) else os.curdir)


def make_engine_files_dir(engine_cwd: str) -> None:
  """Every VizDoom engine keeps its files in _vizdoom under its cwd, which it checks for and then
  creates: two engines started at once (a stage's workers) raced there, the loser failing with
  "File exists" and crashing its worker. So the directory exists before any engine looks."""
  os.makedirs(os.path.join(engine_cwd, ENGINE_FILES), exist_ok=True)


def tie_engine_to_owner(game: Any, home: str) -> bool:
  """The engine process of VizDoom's `game` gets killed when this process dies, however it dies,
  and runs in `home`: wm/vizdoom_engine.sh starts the package's engine there, under a
  parent-death signal. False for a VizDoom without its bundled engine: that one keeps its own, in
  this process's cwd."""
  import vizdoom  # pylint: disable=import-outside-toplevel  (imported already: it made the game)
  engine = os.path.join(os.path.dirname(vizdoom.__file__), 'vizdoom')
  if not (os.path.isfile(engine) and os.access(ENGINE_WRAPPER, os.X_OK)):
    return False
  os.environ['WM_VIZDOOM_ENGINE'] = engine
  os.environ['WM_VIZDOOM_HOME'] = home
  game.set_vizdoom_path(ENGINE_WRAPPER)
  return True


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
            'gym_id': env.spec.id if env.spec else None,
            'frames_from': _describe_source(spec),
            **({'make_kwargs': config.gym_kwargs()} if config.make_kwargs else {})}
  finally:
    pixel_env.close()


_KWARGS_CHECKED: set[tuple[str, str]] = set()


def check_make_kwargs(config: EnvConfig) -> None:
  """Makes the environment with `env.make_kwargs` (once per process; no reset, so no game
  starts): wm/config.py's validate() calls it, so a stage refuses arguments the environment
  does not take before it writes anything. A ConfigError names the field and the refusal."""
  key = (config.name, config.make_kwargs)
  if not config.make_kwargs or key in _KWARGS_CHECKED:
    return
  pixel_env = make(config)
  try:
    _check_vizdoom_kwargs(pixel_env.env, config)
  finally:
    pixel_env.close()
  _KWARGS_CHECKED.add(key)


def _check_vizdoom_kwargs(env: gym.Env, config: EnvConfig) -> None:
  """VizDoom takes gym.make's extra arguments as game settings and skips one it does not know
  with a warning on stderr, not an error: a scratch game (never started) says whether it took
  them all."""
  game = getattr(env.unwrapped, 'game', None)
  if not config.make_kwargs or game is None or not hasattr(game, 'set_config'):
    return
  if not type(game)().set_config(config.gym_kwargs()):
    raise ConfigError(f'environment env.name={config.name!r}: VizDoom did not take every '
                      f'setting of env.make_kwargs={config.make_kwargs!r} (its "Unsupported" '
                      'warning above names the one; settings: VizDoom\'s DoomGame.set_config)')


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
  frame = (env.render() if spec.pixels_from == 'render' else
           obs[spec.frame_key] if spec.frame_key else obs)
  if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3
          and frame.dtype == np.uint8):
    raise UserError(f'{where}: frames must be HxWx3 uint8 rgb arrays, got '
                    f'{getattr(frame, "shape", None)} {getattr(frame, "dtype", type(frame))}')
  return frame


def _describe_source(spec: EnvSpec) -> str:
  """Where the frames come from, and whether that was inferred (the pre-check logs it)."""
  source = ('env.render()' if spec.pixels_from == 'render' else
            f'observation[{spec.frame_key!r}]' if spec.frame_key else 'the observation')
  return f'{source} ({"inferred" if spec.inferred else "wm/envs.py REGISTRY"})'


def _sample_vector(space: gym.Space) -> np.ndarray:
  """A random action as the stages send it: a float32 vector, one-hot for Discrete."""
  if isinstance(space, gym.spaces.Discrete):
    return np.eye(space.n, dtype=np.float32)[space.sample() - space.start]
  return np.asarray(space.sample(), np.float32).ravel()
