"""The agent: V, M and C together, stepping a batch of environments in one fused TF call.

`WorldModel.load(run, config)` rebuilds V (RUN/vae/export) and M (RUN/seq/export) and checks that
they fit each other and the environment. `WorldModel.step(frames, state, params)` is one compiled
`tf.function`: encode the frames, act with each row's controller parameters on (mu, h), advance
M with that action. `Agent` wraps it as a `wm.policies.Policy` for one environment, so the
collector, evaluate.py and play can use a trained controller; its `info` carries z (mu, logvar),
h, M's prediction for the next step and the action, which play's panels draw.

V and M come from wm/artifacts.py (load_models), which owns the run's trained files.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from wm import artifacts, envs
from wm.config import Config
from wm.errors import DataError
from wm.infra import runs
from wm.models.controller import Controller
from wm.policies import Policy, PolicyStep


class WorldModel:
  """V + M + the controller's shape; `step` runs all three for a batch of environments."""

  def __init__(self, encoder: Any, seq: Any, controller: Controller):
    self.encoder, self.seq, self.controller = encoder, seq, controller
    self.step = tf.function(self._step, reduce_retracing=True)
    # The action and the next state only: in a graph, what no output needs (M's prediction head,
    # V's logvar) is pruned, so acting costs less than `step` (the controller stage's real
    # episodes, where nothing else is read).
    self.act = tf.function(lambda frames, state, params: self._act(frames, state, params),
                           reduce_retracing=True)

  @classmethod
  def load(cls, run: runs.Run, config: Config, action_space=None) -> 'WorldModel':
    models = artifacts.load_models(run)
    encoder, seq = models.encoder, models.seq
    if action_space is None:
      action_space = action_space_of(config)
    action_size = envs.action_size(action_space)
    if seq.action_size != action_size:
      raise DataError(f'M in {artifacts.seq_export(run)} takes actions of size '
                      f'{seq.action_size}, the environment {config.env.name} has {action_size}: '
                      'wrong run dir or env.name?')
    controller = Controller.from_config(config.controller, encoder.z_size, seq, action_space)
    return cls(encoder, seq, controller)

  def _act(self, frames: tf.Tensor, state: Any, params: tf.Tensor):
    out, state = self._step(frames, state, params)
    return out['action'], state

  def _step(self, frames: tf.Tensor, state: Any, params: tf.Tensor):
    mu, logvar = self.encoder.encode(frames)
    mu, logvar = tf.cast(mu, tf.float32), tf.cast(logvar, tf.float32)
    h = tf.cast(self.seq.features(state), tf.float32)
    action = self.controller(params, mu, self.controller.memory(self.seq, state))
    prediction, state = self.seq.step(mu, action, state)
    fields = {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}
    return {'mu': mu, 'logvar': logvar, 'h': h, 'action': action, 'prediction': fields}, state


def action_space_of(config: Config):
  """The environment's action space (the env is made but never reset: cheap)."""
  env = envs.make(config.env)
  try:
    return env.action_space
  finally:
    env.close()


# ---------------------------------------------------------------------------- the Policy


NOISE_STREAM = 7_000_001  # the exploration noise's seed stream (episode seed, this)


class Agent(Policy):
  """One environment's policy from a WorldModel and one controller parameter vector.

  The controller is deterministic: z is V's mean (the paper's code drew z from V's posterior in
  the real game, as M learns and the dream plays; on Doom that scored lower: docs/results.md).
  With `noise` > 0 (the iterative training's collection: collect.action_noise) it explores:
  each bounded action dimension gets Gaussian noise of std noise x its range, clipped to the
  range (unbounded ones std noise); a Discrete action is replaced by a uniformly random one with
  probability noise. The noise is seeded by the episode's seed. `info['action']` stays the
  controller's own.
  """

  def __init__(self, world: WorldModel, params: np.ndarray, noise: float = 0.0):
    self.world, self.noise = world, noise
    self.params = tf.constant(np.asarray(params, np.float32)[None])
    self.state = world.seq.initial_state(1)
    self.rng = np.random.default_rng(NOISE_STREAM)

  def reset(self, seed: int) -> None:
    self.state = self.world.seq.initial_state(1)
    self.rng = np.random.default_rng([seed, NOISE_STREAM])

  def act(self, frame: np.ndarray) -> PolicyStep:
    out, self.state = self.world.step(tf.constant(frame[None]), self.state, self.params)
    info = tf.nest.map_structure(lambda t: t.numpy()[0], out)
    action = info['action'].astype(np.float32)
    return PolicyStep(self.explore(action) if self.noise > 0 else action, info)

  def explore(self, action: np.ndarray) -> np.ndarray:
    controller = self.world.controller
    if controller.discrete:
      if self.rng.random() < self.noise:
        action = np.eye(len(action), dtype=np.float32)[self.rng.integers(len(action))]
      return action
    low, high = controller.bounds()
    scale = np.where(np.isfinite(high - low), high - low, 1.0)
    noisy = action + self.rng.normal(0.0, self.noise, action.shape) * scale
    return np.clip(noisy, low, high).astype(np.float32)
