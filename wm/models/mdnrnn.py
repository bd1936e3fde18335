"""The paper's MDN-RNN: an LSTM over (z, action) with a mixture-density head (M).

    x_t = [z_t, a_t] --LSTM--> h_t --PredictionHead--> p(z_{t+1}), reward_t, done_t

Training unrolls whole sequences (`sequence_features`, teacher forcing) with the Keras LSTM
layer's weights: on a CPU through wm/models/fused_lstm.py's compiled loops, on a GPU through the
layer itself (cuDNN). `step` runs the very same weights one step at a time through the layer's
cell, for the controller, dream rollouts and play. The state is the LSTM's (h, c); the controller
sees h.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tensorflow as tf

from wm import hardware
from wm.models import fused_lstm, mdn
from wm.models.base import Prediction, SequenceModel, head_input

if TYPE_CHECKING:
  from wm.config import SeqConfig


class MDNRNN(SequenceModel):
  """LSTM with `hidden_size` units and `num_mixtures` Gaussians per latent dimension."""

  @classmethod
  def kwargs_from_config(cls, seq: SeqConfig, z_size: int, action_size: int) -> dict[str, Any]:
    """The constructor arguments the config's seq section asks for (JSON: the export keeps them)."""
    return {'z_size': z_size, 'action_size': action_size, 'hidden_size': seq.hidden_size,
            'num_mixtures': seq.num_mixtures}

  def __init__(self, z_size: int, action_size: int, hidden_size: int = 256,
               num_mixtures: int = 5, **kwargs):
    super().__init__(**kwargs)
    self.z_size, self.action_size = z_size, action_size
    self.hidden_size, self.num_mixtures = hidden_size, num_mixtures
    self.feature_size = self.cell_size = hidden_size
    self.lstm = tf.keras.layers.LSTM(hidden_size, return_sequences=True, return_state=True,
                                     name='lstm')
    self.head = mdn.PredictionHead(z_size, num_mixtures, name='head')

  def get_config(self) -> dict[str, Any]:
    return {'z_size': self.z_size, 'action_size': self.action_size,
            'hidden_size': self.hidden_size, 'num_mixtures': self.num_mixtures}

  def sequence_features(self, z: tf.Tensor, actions: tf.Tensor, training: bool = False,
                        precision: str = 'float32', resets: tf.Tensor | None = None) -> tf.Tensor:
    """The LSTM's h after each step: [B, T, hidden_size]. On a CPU, `precision` is that of the
    fused loops' products outside the loops; on a GPU cuDNN's kernel runs in float32, and
    packed rows (`resets`) run the cell step by step (cuDNN cannot restart mid-sequence)."""
    del training
    x = tf.concat([z, actions], -1)
    if not self.lstm.built:
      self.lstm.build(x.shape)
    if fused_lstm.enabled():
      return fused_lstm.unroll(self.lstm, x, precision=precision, resets=resets)[0]
    if resets is None:
      return self.lstm(x)[0]
    return self._stepped_features(x, resets)

  def _stepped_features(self, x: tf.Tensor, resets: tf.Tensor) -> tf.Tensor:
    """The cell over x [B, T, I] one step at a time, the state zeroed where `resets` is 1."""
    keep = 1.0 - tf.cast(tf.transpose(resets), x.dtype)[:, :, None]
    state = self.initial_state(tf.shape(x)[0])

    def body(state, inputs):
      x_t, keep_t = inputs
      h, (h, c) = self.lstm.cell(x_t, [state[0] * keep_t, state[1] * keep_t])
      return h, c

    hs, _ = tf.scan(body, (tf.transpose(x, [1, 0, 2]), keep), initializer=state)
    return tf.transpose(hs, [1, 0, 2])

  def initial_state(self, batch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    zeros = tf.zeros([batch_size, self.hidden_size])
    return (zeros, zeros)

  def step(self, z: tf.Tensor, action: tf.Tensor, state: tuple[tf.Tensor, tf.Tensor],
           feature_mask: tf.Tensor | None = None, head_rows: tf.Tensor | int | None = None
           ) -> tuple[Prediction, tuple[tf.Tensor, tf.Tensor]]:
    h, (h, c) = self.lstm.cell(tf.concat([z, action], -1), list(state))
    return self.head(head_input(h, feature_mask, head_rows)), (h, c)

  def frozen_step(self, precision: str = 'float32'):
    """`step` with the cell's and the head's products in bfloat16 when asked (the products run
    3.5x faster on a CPU with AMX, the dream 1.3x: docs/benchmarks.md); the gates' arithmetic,
    the state and the prediction stay float32."""
    if precision != 'bfloat16':
      return self.step, 'float32'
    cell, dense = self.lstm.cell, self.head.dense
    kernel = tf.cast(cell.kernel, tf.bfloat16)
    recurrent = tf.cast(cell.recurrent_kernel, tf.bfloat16)
    head_kernel = tf.cast(dense.kernel, tf.bfloat16)
    bias, head_bias = tf.identity(cell.bias), tf.identity(dense.bias)

    def step(z, action, state, feature_mask=None, head_rows=None):
      h, c = state
      x = tf.cast(tf.concat([z, action], -1), tf.bfloat16)
      gates = tf.cast(tf.matmul(x, kernel) + tf.matmul(tf.cast(h, tf.bfloat16), recurrent),
                      tf.float32) + bias
      i, f, g, o = tf.split(gates, 4, axis=-1)  # Keras' order
      c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
      h = tf.sigmoid(o) * tf.tanh(c)
      read = head_input(h, feature_mask, head_rows)
      outputs = hardware.matmul(read, head_kernel, 'bfloat16') + head_bias
      return self.head.unpack(outputs), (h, c)

    return step, 'bfloat16'

  def features(self, state: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
    return state[0]

  def cell(self, state: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
    return state[1]

  def sample(self, prediction: Prediction, temperature: float = 1.0, seed: Any = None,
             rows: tf.Tensor | None = None, size: Any = None) -> tf.Tensor:
    return mdn.sample(prediction, temperature, seed, rows, size)
