"""Playing episodes to watch: in the real env or inside M, with panels, videos and a window.

    models = artifacts.load_models(run)        # V and M from RUN/vae/export, RUN/seq/export
    policy = WorldModelPanels(agent, models, env.action_space, temperature)  # only for panels
    result = play_episode(env, policy, seed, sinks=[video_writer.append])

Panels are found in what the policy returns (`PolicyStep.info`, see wm/render.py): any policy can
publish its own. `WorldModelPanels` adds V's and M's view of each step (reconstruction, predicted
next frame, latent mean +- sigma, the action within its bounds, M's hidden state); play adds the
return so far. Without rendering (play's --alg_render) none of that code runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from wm import artifacts, render
from wm.errors import DataError
from wm.policies import Policy, PolicyStep

EPISODE_LINE = 'episode {index}: return {ret:.2f} over {steps} steps{where}'
SCALE = 4  # frames are shown this many times their size


def latent_actor(policy: Policy) -> Callable | None:
  """(z, h) -> action for a policy that acts on latents (the agent), else None."""
  world, params = getattr(policy, 'world', None), getattr(policy, 'params', None)
  controller = getattr(world, 'controller', None)
  if controller is None or params is None:
    return None
  return lambda z, h: controller(params, z, h)


def action_bounds(space: gym.Space) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Low, high and names of the action vector's dimensions (CarRacing's are named)."""
  if isinstance(space, gym.spaces.Discrete):
    n = int(space.n)
    return np.zeros(n), np.ones(n), tuple(f'action {i}' for i in range(n))
  low = np.where(np.isfinite(space.low), space.low, -1.0).ravel()
  high = np.where(np.isfinite(space.high), space.high, 1.0).ravel()
  names = ('steer', 'gas', 'brake') if len(low) == 3 else tuple(str(i) for i in range(len(low)))
  return low, high, names


def sample_seed(seed: int, step: int) -> tuple[int, int]:
  """A stateless seed for M's sample at `step` of the episode `seed`: replays draw the same."""
  return (seed % (2**31 - 1), step)


def _ends(done_logit: float, done_rule: str, rng: np.random.Generator,
          done_odds: float = 1.0) -> bool:
  """Whether M ends the dream here, by controller.dream_done's rule and dream_done_odds (as
  wm/dream.py; one episode of 'expected' is drawn as 'sample' draws it)."""
  done_logit += math.log(done_odds)
  if done_rule == 'threshold':
    return done_logit > 0
  return rng.random() < 1.0 / (1.0 + np.exp(-done_logit))


def _numpy(x: Any) -> np.ndarray:
  return np.asarray(x.numpy() if hasattr(x, 'numpy') else x, np.float32)


class WorldModelPanels(Policy):
  """Wraps a policy and publishes V's and M's panels in its info (only while rendering).

  Uses the latent, hidden state and prediction the policy reports in its info ('mu', 'logvar',
  'h', 'prediction') when it has them; otherwise (a random policy) computes them with V and M,
  stepping its own copy of M's state.
  """

  def __init__(self, policy: Policy, world: artifacts.Models, action_space: gym.Space,
               temperature: float):
    self.policy, self.world, self.temperature = policy, world, temperature
    self.low, self.high, self.names = action_bounds(action_space)
    self.state, self.seed, self.t = None, 0, 0

  def reset(self, seed: int) -> None:
    self.policy.reset(seed)
    self.state, self.seed, self.t = self.world.seq.initial_state(1), seed, 0

  def act(self, frame: np.ndarray) -> PolicyStep:
    step = self.policy.act(frame)
    if render.enabled():
      step.info['world_model'] = self.panels(frame, step)
    return step

  def panels(self, frame: np.ndarray, step: PolicyStep) -> dict[str, render.Panel]:
    import tensorflow as tf
    encoder, seq, info = self.world.encoder, self.world.seq, step.info
    if 'mu' in info and 'logvar' in info:
      mu, logvar = tf.reshape(info['mu'], (1, -1)), tf.reshape(info['logvar'], (1, -1))
    else:
      mu, logvar = encoder.encode(tf.convert_to_tensor(frame[None]))
    mu, logvar = tf.cast(mu, tf.float32), tf.cast(logvar, tf.float32)
    h = info['h'] if 'h' in info else seq.features(self.state)
    prediction = info.get('prediction')
    if isinstance(prediction, dict):  # the agent reports its fields, batch row 0
      from wm.models.base import Prediction
      prediction = Prediction(**{k: tf.convert_to_tensor(v)[None] for k, v in prediction.items()})
    action = tf.convert_to_tensor(np.asarray(step.action, np.float32)[None])
    if prediction is None:
      prediction, self.state = seq.step(mu, action, self.state)
    next_z = seq.sample(prediction, self.temperature, seed=sample_seed(self.seed, self.t))
    self.t += 1
    decoded = _numpy(encoder.decode(tf.concat([mu, next_z], axis=0)))
    return {
        'reconstruction': render.ImagePanel('V: reconstruction', decoded[0]),
        'prediction': render.ImagePanel(f'M: next frame (T={self.temperature:g})', decoded[1]),
        'latent': render.BarPanel('V: z mean +- sigma', _numpy(mu),
                                  np.exp(0.5 * _numpy(logvar))),
        'action': render.BoundedBarPanel('action', step.action, self.low, self.high, self.names),
        'hidden': render.HeatmapPanel('M: hidden state h', _numpy(h)),
    }


@dataclasses.dataclass
class EpisodeResult:
  ret: float  # sum of rewards
  steps: int
  action_mean: list[float]  # each action dimension's mean over the episode (Discrete: how often)
  action_abs_mean: list[float]  # ... and its mean magnitude (a steering that swings hard)


class ActionTally:
  """Sums an episode's actions as vectors (a Discrete action as its one-hot) for EpisodeResult."""

  def __init__(self, space: gym.Space):
    self.space, self.total, self.total_abs, self.count = space, 0.0, 0.0, 0

  def add(self, action) -> None:
    vector = np.asarray(action, np.float64).ravel()
    if isinstance(self.space, gym.spaces.Discrete) and vector.size == 1:
      vector = np.eye(int(self.space.n))[int(vector[0])]
    self.total, self.total_abs = self.total + vector, self.total_abs + np.abs(vector)
    self.count += 1

  def result(self, ret: float, steps: int) -> EpisodeResult:
    n = max(self.count, 1)
    return EpisodeResult(ret, steps, [float(v) for v in np.atleast_1d(self.total / n)],
                         [float(v) for v in np.atleast_1d(self.total_abs / n)])


Sink = Callable[[np.ndarray], None]


def show(frame: np.ndarray, info: dict, returns: Sequence[float], max_steps: int) -> np.ndarray:
  """The image of one step: the frame upscaled, with the panels beside it when rendering."""
  if not render.enabled():
    return np.repeat(np.repeat(frame, SCALE, axis=0), SCALE, axis=1)
  panels = render.find_panels(info)
  panels.append(render.CurvePanel('return so far', returns, x_max=max_steps))
  return render.compose(frame, panels, scale=SCALE)


def play_episode(env, policy: Policy, seed: int, sinks: Sequence[Sink] = ()) -> EpisodeResult:
  """One episode in the real env; every shown image goes to each sink (video, window)."""
  frame = env.reset(seed=seed)
  policy.reset(seed)
  returns, total, steps, done = [], 0.0, 0, False
  tally = ActionTally(env.action_space)
  while not done:
    step = policy.act(frame)
    tally.add(step.action)
    next_frame, reward, terminated, truncated = env.step(step.action)
    total += reward
    returns.append(total)
    steps += 1
    if sinks:
      image = show(frame, step.info, returns, env.config.agent_steps())
      for sink in sinks:
        sink(image)
    frame, done = next_frame, terminated or truncated
  return tally.result(total, steps)


def dream_episode(world: artifacts.Models, start: artifacts.StartLatents | None, policy: Policy,
                  seed: int, temperature: float, max_steps: int, action_space: gym.Space,
                  sinks: Sequence[Sink] = (), done_rule: str = 'sample',
                  done_odds: float = 1.0) -> EpisodeResult:
  """One episode inside M: frames decoded from M's own samples, the policy acting on them.

  The first latent is the mean latent of a real rollout's first frame (`start`, from
  RUN/seq/initial_latents.npz) or, without one, a draw from V's prior. Rewards and the episode's
  end are M's predictions.
  """
  import tensorflow as tf
  rng = np.random.default_rng(seed)
  encoder, seq = world.encoder, world.seq
  bounds = action_bounds(action_space)
  if start is not None:
    z = start.mu[rng.integers(len(start.mu))][None]
  else:
    z = rng.normal(size=(1, seq.z_size)).astype(np.float32)
  z = tf.convert_to_tensor(z, tf.float32)
  state = seq.initial_state(1)
  policy.reset(seed)
  act_on_latent = latent_actor(policy)
  returns, total, steps = [], 0.0, 0
  tally = ActionTally(action_space)
  for _ in range(max_steps):
    frame = (np.clip(_numpy(encoder.decode(z))[0], 0, 1) * 255 + 0.5).astype(np.uint8)
    h = tf.cast(seq.features(state), tf.float32)
    if act_on_latent:  # the controller sees M's z and h, as in training in the dream
      action = tf.cast(act_on_latent(z, h), tf.float32)
      step = PolicyStep(_numpy(action)[0])
    else:  # any other policy sees the decoded frame
      step = policy.act(frame)
      action = tf.convert_to_tensor(np.asarray(step.action, np.float32)[None])
    tally.add(step.action)
    prediction, state = seq.step(z, action, state)
    total += float(_numpy(prediction.reward).ravel()[0])
    returns.append(total)
    steps += 1
    if sinks:
      if render.enabled():
        step.info['dream'] = {
            'latent': render.BarPanel('M: dreamt z', _numpy(z)),
            'action': render.BoundedBarPanel('action', step.action, *bounds),
            'hidden': render.HeatmapPanel('M: hidden state h', _numpy(h)),
        }
      image = show(frame, step.info, returns, max_steps)
      for sink in sinks:
        sink(image)
    if _ends(float(_numpy(prediction.done_logit).ravel()[0]), done_rule, rng, done_odds):
      break
    z = seq.sample(prediction, temperature, seed=sample_seed(seed, steps))
  return tally.result(total, steps)


class Window:
  """Shows images in a pygame window; on a node without a display, inside a virtual one (Xvfb).

  The virtual display starts at once, so a node without Xvfb is refused before any episode."""

  def __init__(self, title: str = 'play', max_size: tuple[int, int] = (2048, 1024)):
    self.title, self.screen, self.display = title, None, None
    if not os.environ.get('DISPLAY'):
      try:
        from pyvirtualdisplay import Display
        self.display = Display(visible=False, size=max_size)
        self.display.start()
      except Exception as e:  # pyvirtualdisplay raises plain exceptions when Xvfb is missing
        raise DataError(f'--render needs a display: $DISPLAY is not set and no virtual display '
                        f'could start ({type(e).__name__}: {e}); install Xvfb (apt-get install '
                        f'xvfb) or drop --render and use --record_file') from None

  def open(self, width: int, height: int) -> None:
    import pygame
    if pygame.display.get_init() and pygame.display.get_driver() != 'x11':
      pygame.display.quit()  # the env's renderer started it on SDL's 'dummy' driver (wm.envs)
    os.environ['SDL_VIDEODRIVER'] = 'x11'
    pygame.display.init()
    pygame.display.set_caption(self.title)
    self.screen = pygame.display.set_mode((width, height))

  def __call__(self, image: np.ndarray) -> None:
    import pygame
    if self.screen is None:
      self.open(image.shape[1], image.shape[0])
    pygame.surfarray.blit_array(self.screen, image.swapaxes(0, 1))
    pygame.display.flip()
    pygame.event.pump()

  def close(self) -> None:
    if self.screen is not None:
      import pygame
      pygame.display.quit()
    if self.display is not None:
      self.display.stop()
