"""The controller C: a tiny policy on V's latent z and M's features h, evolved by CMA-ES.

    inputs='zh'         a = squash(W [z, h] + b)                 the paper's (867 parameters for
                                                                   z=32, h=256, 3 actions)
    inputs='z'          a = squash(W z + b)                      the paper's "V only" ablation
    inputs='zh_hidden'  a = squash(W2 tanh(W1 [z, h] + b1) + b2)  "... with a hidden layer"
    inputs='zch'        a = squash(W [z, c, h] + b)              the paper's Doom controller: the
                                                                   LSTM's cell c as well (M must
                                                                   have one: seq.model=mdnrnn)

Parameters are one flat float vector (what CMA-ES searches), laid out as the weights of each
layer (row-major) followed by its bias. `__call__` is batched over candidates: row i of
`params` drives row i of the inputs, so a whole population runs in one TensorFlow call. What
the controller takes of M's state (h, or c and h) is `memory(seq, state)`; `h_size` is its size.

`squash` maps raw outputs into the action space: tanh onto each bounded Box dimension's
[low, high] (steering in [-1, 1]; (tanh + 1) / 2 for gas and brake in [0, 1]), the raw value
on unbounded dimensions, and for a Discrete(n) space a one-hot of the argmax of n outputs
(`discrete='argmax'`), or with `discrete='line'` of one output: tanh cut into n equal bins that
name the actions in `line_order` from -1 to 1. The paper's Doom controller had one output (its
1,088 parameters are one per input of [z, c, h]); cut in three it reads left below -1/3, right
above 1/3, still between (TakeCover's actions 2, 0, 1), with a third of the argmax's parameters
for a search to move through.

With `rest='low'` a one-sided dimension (a range not centred on 0, such as gas and brake in
[0, 1]) maps to low + max(tanh, 0) * (high - low) instead: a zero output leaves it at its low
end, off, as the paper's code did for the brake. A zero controller then neither brakes nor
accelerates, where with `rest='middle'` it half brakes, and the search first spends generations
learning to let go.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import tensorflow as tf

from wm.errors import ConfigError

INPUTS = ('z', 'zh', 'zh_hidden', 'zch')
RESTS = ('middle', 'low')
DISCRETE = ('argmax', 'line')


class Controller:
  """Shapes, parameter layout and the batched forward pass of one controller variant."""

  def __init__(self, inputs: str, z_size: int, h_size: int, action_space: gym.Space,
               hidden_units: int = 40, rest: str = 'middle', discrete: str = 'argmax',
               line_order: tuple[int, ...] = ()):
    if inputs not in INPUTS:
      raise ConfigError(f'controller.inputs={inputs!r} is not one of {INPUTS}')
    if rest not in RESTS:
      raise ConfigError(f'controller.rest={rest!r} is not one of {RESTS}')
    if discrete not in DISCRETE:
      raise ConfigError(f'controller.discrete={discrete!r} is not one of {DISCRETE}')
    self.inputs, self.z_size, self.h_size, self.rest = inputs, z_size, h_size, rest
    self.input_size = z_size + (0 if inputs == 'z' else h_size)
    self.discrete = isinstance(action_space, gym.spaces.Discrete)
    self.discrete_output = discrete
    self.line_order: tuple[int, ...] = ()  # discrete=line: the actions from -1 to 1 (else unused)
    if self.line and not self.discrete:
      raise ConfigError(f'controller.discrete=line cuts one output into a Discrete space\'s '
                        f'actions, and this environment\'s actions are {action_space}: use '
                        'controller.discrete=argmax (Box actions ignore it)')
    if self.discrete:
      self.action_size = int(action_space.n)
      low = high = np.full(self.action_size, np.nan)
    else:
      self.action_size = int(np.prod(action_space.shape))
      low = np.asarray(action_space.low, np.float64).ravel()
      high = np.asarray(action_space.high, np.float64).ravel()
    if self.line:
      order = tuple(line_order) or tuple(range(self.action_size))
      if sorted(order) != list(range(self.action_size)):
        raise ConfigError(f'controller.line_order={",".join(map(str, order))} is not an order of '
                          f'the {self.action_size} actions 0..{self.action_size - 1}: name each '
                          'once, from the output\'s -1 to its 1')
      self.line_order = order
      self._line_order = tf.constant(order, tf.int32)
    bounded = np.isfinite(low) & np.isfinite(high)
    self._low_high = (np.where(bounded, low, -np.inf), np.where(bounded, high, np.inf))
    self._bounded = tf.constant(bounded)
    self._low = tf.constant(np.where(bounded, low, 0.0), tf.float32)
    self._high = tf.constant(np.where(bounded, high, 0.0), tf.float32)
    self._rest_low = tf.constant(bounded & (low != -high) & (rest == 'low'))
    sizes = [self.input_size] + ([hidden_units] if inputs == 'zh_hidden' else [])
    sizes.append(1 if self.line else self.action_size)
    self.shapes = []  # [(name, shape)] in the order of the flat vector
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
      self.shapes += [(f'w{i}', (n_in, n_out)), (f'b{i}', (n_out,))]
    self.num_params = int(sum(np.prod(shape) for _, shape in self.shapes))

  @property
  def line(self) -> bool:
    """Discrete actions read from one output cut into bins (discrete='line')."""
    return self.discrete_output == 'line'

  @classmethod
  def from_config(cls, config, z_size: int, seq, action_space: gym.Space) -> 'Controller':
    """The variant `config` (a ControllerConfig) names, for V's z and what it takes of M `seq`
    (a wm.models.base.SequenceModel)."""
    h_size = seq.feature_size
    if config.inputs == 'zch':
      if not seq.cell_size:
        raise ConfigError(f'controller.inputs=zch reads M\'s cell state, and {type(seq).__name__} '
                          'has none: use controller.inputs=zh, or an LSTM M (seq.model=mdnrnn)')
      h_size += seq.cell_size
    return cls(config.inputs, z_size, h_size, action_space, config.hidden_units, config.rest,
               config.discrete, parse_line_order(config.line_order))

  def memory(self, seq, state) -> tf.Tensor | None:
    """What this controller takes of M's state, float32 [B, h_size]: M's features h, or
    [c, h] for inputs=zch; None for inputs=z."""
    if self.inputs == 'z':
      return None
    h = tf.cast(seq.features(state), tf.float32)
    if self.inputs == 'zch':
      return tf.concat([tf.cast(seq.cell(state), tf.float32), h], axis=1)
    return h

  # ------------------------------------------------------------------ flat vector <-> weights

  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of each action dimension, -inf/inf where unbounded (Box spaces)."""
    return self._low_high

  def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
    """One flat vector [num_params] -> {'w0': [in, out], 'b0': [out], ...}."""
    params = np.asarray(params)
    if params.shape != (self.num_params,):
      raise ValueError(f'controller parameters of shape {params.shape}, expected '
                       f'({self.num_params},) for inputs={self.inputs!r}')
    weights, at = {}, 0
    for name, shape in self.shapes:
      size = int(np.prod(shape))
      weights[name] = params[at:at + size].reshape(shape)
      at += size
    return weights

  def flatten(self, weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(weights[name]).reshape(-1) for name, _ in self.shapes])

  def _layers(self, params: tf.Tensor) -> list[tf.Tensor]:
    """Batched [B, num_params] -> the per-row weights [B, in, out] and biases [B, out]."""
    sizes = [int(np.prod(shape)) for _, shape in self.shapes]
    parts = tf.split(params, sizes, axis=1)
    return [tf.reshape(p, [-1, *shape]) for p, (_, shape) in zip(parts, self.shapes)]

  # ------------------------------------------------------------------ forward pass

  def inputs_of(self, z: tf.Tensor, h: tf.Tensor | None) -> tf.Tensor:
    if self.inputs == 'z':
      return z
    return tf.concat([z, h], axis=1)

  def raw(self, params: tf.Tensor, z: tf.Tensor, h: tf.Tensor | None) -> tf.Tensor:
    """Unsquashed outputs [B, A] of candidate params [B, num_params] on z [B, Z], h [B, H]."""
    x = self.inputs_of(tf.cast(z, tf.float32), None if h is None else tf.cast(h, tf.float32))
    layers = self._layers(tf.cast(params, tf.float32))
    for i in range(0, len(layers), 2):
      x = tf.einsum('bi,bio->bo', x, layers[i]) + layers[i + 1]
      if i + 2 < len(layers):
        x = tf.tanh(x)
    return x

  def squash(self, raw: tf.Tensor) -> tf.Tensor:
    if self.line:
      unit = (tf.tanh(raw[:, 0]) + 1.0) * 0.5  # in [0, 1]: bin i of n is [i / n, (i + 1) / n)
      bins = tf.minimum(tf.cast(unit * self.action_size, tf.int32), self.action_size - 1)
      return tf.one_hot(tf.gather(self._line_order, bins), self.action_size, dtype=tf.float32)
    if self.discrete:
      return tf.one_hot(tf.argmax(raw, axis=1), self.action_size, dtype=tf.float32)
    t = tf.tanh(raw)
    unit = tf.where(self._rest_low, tf.nn.relu(t), (t + 1.0) * 0.5)  # in [0, 1]
    scaled = self._low + unit * (self._high - self._low)
    return tf.where(self._bounded, scaled, raw)

  def __call__(self, params: tf.Tensor, z: tf.Tensor, h: tf.Tensor | None) -> tf.Tensor:
    """Actions [B, A] (float32, inside the action space) for a batch of candidates."""
    return self.squash(self.raw(params, z, h))


def parse_line_order(text: str) -> tuple[int, ...]:
  """controller.line_order ('2,0,1') as action indices; '' is the actions' own order."""
  try:
    return tuple(int(part) for part in text.split(',')) if text.strip() else ()
  except ValueError:
    raise ConfigError(f'controller.line_order={text!r} is not a comma-separated list of action '
                      'indices, e.g. 2,0,1') from None
