"""Policies: the `Policy` interface and the random policies that collect the first data.

A policy sees one frame at a time and returns a `PolicyStep`: the action vector (float32; one-hot
for Discrete spaces) and an `info` dict where a policy may publish extra outputs, such as render
panels (see wm/render.py). The trained agent (wm/agent.py: V + M + the controller) implements the
same interface, so the collector can gather rollouts with it (the paper's iterative training).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

from wm.config import CollectConfig
from wm.errors import ConfigError


@dataclasses.dataclass
class PolicyStep:
  action: np.ndarray  # float32 action vector of length action_size
  info: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra outputs (panels, state)


class Policy(abc.ABC):
  """Acts on frames: reset(seed) at the start of every episode, then act(frame) each step."""

  @abc.abstractmethod
  def reset(self, seed: int) -> None:
    """Starts an episode; `seed` makes a stochastic policy reproducible."""

  @abc.abstractmethod
  def act(self, frame: np.ndarray) -> PolicyStep:
    """Returns the action for `frame` (H x W x 3 uint8)."""


class _RandomPolicy(Policy):
  """Common parts: bounds of the action space, an rng reset per episode."""

  def __init__(self, action_space: gym.Space):
    self.discrete = isinstance(action_space, gym.spaces.Discrete)
    if self.discrete:
      self.low, self.high = np.zeros(action_space.n), np.ones(action_space.n)
    else:
      # Unbounded dimensions are sampled in [-1, 1].
      self.low = np.where(np.isfinite(action_space.low), action_space.low, -1.0).ravel()
      self.high = np.where(np.isfinite(action_space.high), action_space.high, 1.0).ravel()
    self.rng = np.random.default_rng(0)

  def reset(self, seed: int) -> None:
    self.rng = np.random.default_rng(seed)

  def _uniform(self) -> np.ndarray:
    return self.rng.uniform(self.low, self.high)

  def _emit(self, raw: np.ndarray) -> PolicyStep:
    if self.discrete:
      onehot = np.zeros(len(raw), np.float32)
      onehot[int(np.argmax(raw))] = 1.0
      return PolicyStep(onehot)
    return PolicyStep(raw.astype(np.float32))


class UniformPolicy(_RandomPolicy):
  """A new uniformly random action every frame."""

  def act(self, frame: np.ndarray) -> PolicyStep:
    return self._emit(self._uniform())


class BrownianPolicy(_RandomPolicy):
  """Smoothly varying actions: a clipped random walk, steps of `sigma` times the action range."""

  def __init__(self, action_space: gym.Space, sigma: float):
    super().__init__(action_space)
    self.sigma = sigma
    self.current = None

  def reset(self, seed: int) -> None:
    super().reset(seed)
    self.current = self._uniform()

  def act(self, frame: np.ndarray) -> PolicyStep:
    if self.current is None:
      self.current = self._uniform()
    step = self.rng.normal(size=self.low.shape) * self.sigma * (self.high - self.low)
    self.current = np.clip(self.current + step, self.low, self.high)
    return self._emit(self.current)


class HeldPolicy(_RandomPolicy):
  """A uniformly random action held for a random number of frames in [hold_min, hold_max]."""

  def __init__(self, action_space: gym.Space, hold_min: int, hold_max: int):
    super().__init__(action_space)
    self.hold_min, self.hold_max = hold_min, hold_max
    self.current, self.left = None, 0

  def reset(self, seed: int) -> None:
    super().reset(seed)
    self.current, self.left = None, 0

  def act(self, frame: np.ndarray) -> PolicyStep:
    if self.left <= 0:
      self.current = self._uniform()
      self.left = int(self.rng.integers(self.hold_min, self.hold_max + 1))
    self.left -= 1
    return self._emit(self.current)


def make_random(config: CollectConfig, action_space: gym.Space) -> Policy:
  if config.policy == 'uniform':
    return UniformPolicy(action_space)
  if config.policy == 'brownian':
    return BrownianPolicy(action_space, config.brownian_sigma)
  if config.policy == 'held':
    return HeldPolicy(action_space, config.hold_min, config.hold_max)
  raise ConfigError(f'unknown collect.policy={config.policy!r}; one of uniform, brownian, held')
