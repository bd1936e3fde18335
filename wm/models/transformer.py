"""An autoregressive transformer over (z, action) tokens behind the SequenceModel interface (M).

    token_t = Dense([z_t, a_t]) + position_t --causal blocks--> h_t --PredictionHead--> p(z_{t+1})

One token per step; causal self-attention (pre-LayerNorm blocks, GELU MLP of 4x width) lets the
output at step t see steps <= t only, so one call over a whole window [B, T] trains every step at
once (`sequence_features`, teacher forcing), like the LSTM.

Context: at most `max_context` steps (the stage sets it to seq.sequence_length, the window length
it trains on), with learned absolute positions 0 .. max_context-1. `step` keeps the last
`max_context` tokens as its state and reruns the blocks over them each step; once an episode is
longer, the window slides and positions restart at its oldest token, so the model always sees a
window like those it was trained on, and nothing older. There is no key/value cache: a step costs
a forward pass over up to `max_context` tokens (fine for the controller and play; the MDN-RNN is
the cheaper dream environment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tensorflow as tf

from wm.models import mdn
from wm.models.base import Prediction, SequenceModel

if TYPE_CHECKING:
  from wm.config import SeqConfig


class Block(tf.keras.layers.Layer):
  """Pre-LayerNorm causal self-attention and MLP, each with a residual connection."""

  def __init__(self, width: int, num_heads: int, **kwargs):
    super().__init__(**kwargs)
    self.norm1 = tf.keras.layers.LayerNormalization(epsilon=1e-5, name='norm1')
    self.attention = tf.keras.layers.MultiHeadAttention(num_heads, max(width // num_heads, 1),
                                                        name='attention')
    self.norm2 = tf.keras.layers.LayerNormalization(epsilon=1e-5, name='norm2')
    self.mlp_in = tf.keras.layers.Dense(4 * width, activation='gelu', name='mlp_in')
    self.mlp_out = tf.keras.layers.Dense(width, name='mlp_out')

  def call(self, x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    y = self.norm1(x)
    x = x + self.attention(y, y, attention_mask=mask)
    return x + self.mlp_out(self.mlp_in(self.norm2(x)))


class Transformer(SequenceModel):
  """`num_layers` blocks of width `hidden_size`; mixture head as the MDN-RNN's (wm/models/mdn)."""

  @classmethod
  def kwargs_from_config(cls, seq: SeqConfig, z_size: int, action_size: int) -> dict[str, Any]:
    """The constructor arguments the config's seq section asks for (JSON: the export keeps them);
    the context is the window length M trains on."""
    return {'z_size': z_size, 'action_size': action_size, 'hidden_size': seq.hidden_size,
            'num_mixtures': seq.num_mixtures, 'num_layers': seq.num_layers,
            'num_heads': seq.num_heads, 'max_context': seq.sequence_length}

  def __init__(self, z_size: int, action_size: int, hidden_size: int = 256,
               num_mixtures: int = 5, num_layers: int = 2, num_heads: int = 4,
               max_context: int = 100, **kwargs):
    super().__init__(**kwargs)
    self.z_size, self.action_size = z_size, action_size
    self.hidden_size, self.num_mixtures = hidden_size, num_mixtures
    self.num_layers, self.num_heads, self.max_context = num_layers, num_heads, max_context
    self.feature_size = hidden_size
    self.embed = tf.keras.layers.Dense(hidden_size, name='embed')
    self.positions = tf.keras.layers.Embedding(max_context, hidden_size, name='positions')
    self.blocks = [Block(hidden_size, num_heads, name=f'block{i}') for i in range(num_layers)]
    self.norm = tf.keras.layers.LayerNormalization(epsilon=1e-5, name='norm')
    self.head = mdn.PredictionHead(z_size, num_mixtures, name='head')

  def get_config(self) -> dict[str, Any]:
    return {'z_size': self.z_size, 'action_size': self.action_size,
            'hidden_size': self.hidden_size, 'num_mixtures': self.num_mixtures,
            'num_layers': self.num_layers, 'num_heads': self.num_heads,
            'max_context': self.max_context}

  def _hidden(self, tokens: tf.Tensor, positions: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """tokens [B, T, Z+A], positions [B or 1, T], mask [B or 1, T, T] -> features [B, T, H]."""
    x = self.embed(tokens) + self.positions(positions)
    for block in self.blocks:
      x = block(x, mask)
    return self.norm(x)

  def sequence_features(self, z: tf.Tensor, actions: tf.Tensor,
                        training: bool = False) -> tf.Tensor:
    """Teacher forcing: z [B, T, Z], actions [B, T, A] with T <= max_context -> [B, T, H]."""
    del training
    steps = tf.shape(z)[1]
    tf.debugging.assert_less_equal(steps, self.max_context,
                                   message='sequence longer than the transformer\'s max_context')
    causal = tf.linalg.band_part(tf.ones([steps, steps], tf.bool), -1, 0)[None]
    return self._hidden(tf.concat([z, actions], -1), tf.range(steps)[None], causal)

  def initial_state(self, batch_size: int) -> dict[str, tf.Tensor]:
    """tokens: the last max_context inputs, right-aligned; length: how many are real; h."""
    return {'tokens': tf.zeros([batch_size, self.max_context, self.z_size + self.action_size]),
            'length': tf.zeros([batch_size], tf.int32),
            'h': tf.zeros([batch_size, self.hidden_size])}

  def step(self, z: tf.Tensor, action: tf.Tensor,
           state: dict[str, tf.Tensor]) -> tuple[Prediction, dict[str, tf.Tensor]]:
    token = tf.concat([z, action], -1)[:, None]
    tokens = tf.concat([state['tokens'][:, 1:], token], 1)
    length = tf.minimum(state['length'] + 1, self.max_context)
    index = tf.range(self.max_context)[None]
    first = (self.max_context - length)[:, None]  # where the real tokens start
    valid = index >= first
    causal = tf.linalg.band_part(tf.ones([self.max_context] * 2, tf.bool), -1, 0)[None]
    mask = tf.logical_and(causal, valid[:, None, :])
    hidden = self._hidden(tokens, tf.maximum(index - first, 0), mask)[:, -1]
    return self.head(hidden), {'tokens': tokens, 'length': length, 'h': hidden}

  def features(self, state: dict[str, tf.Tensor]) -> tf.Tensor:
    return state['h']

  def sample(self, prediction: Prediction, temperature: float = 1.0,
             seed: Any = None) -> tf.Tensor:
    return mdn.sample(prediction, temperature, seed)
