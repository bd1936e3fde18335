"""An autoregressive transformer over (z, action) tokens behind the SequenceModel interface (M).

    token_t = Dense([z_t, a_t]) + position_t --causal blocks--> h_t --PredictionHead--> p(z_{t+1})

One token per step; causal self-attention (pre-LayerNorm blocks, GELU MLP of 4x width) lets the
output at step t see steps <= t only, so one call over a whole window [B, T] trains every step at
once (`sequence_features`, teacher forcing), like the LSTM.

Context: at most `max_context` steps (the stage sets it to seq.sequence_length, the window length
it trains on), with learned absolute positions 0 .. max_context-1. `step` serves windows like
those from a key/value cache. Its state is the current window per row: its tokens, every layer's
keys and values of them ([B, heads, max_context, head_dim] per layer) and its length; a token's
position is its index in the window. While the window has room, a step puts the new token at the
next position and runs the blocks on that token alone, its attention reading the cached keys and
values: exactly what a causal pass over the window computes at its last position. When a row's
window is full, it restarts from its newest k = max_context//2 tokens, renumbered 0 .. k-1, whose
keys and values one causal pass over those k tokens recomputes; the new token follows at k. Past
max_context steps the model thus sees the last k+1 .. max_context steps, as a window that starts
at position 0 (as in training), and nothing older. (Sliding the window one step at a time would
move every token's position each step, and no cache could serve that.)

Cost: a step computes one token (projections, MLP), plus once every k steps a pass over k tokens,
so one token a step on average, where rerunning the window computed max_context tokens a step.
The new token's key, value and inputs are written into the state's buffers in place (`write`):
an out-of-place update would copy the whole cache every step, at the Doom dream's batch 256 and
max_context 500 about 0.5 GB a step, half the step's time. So `step` consumes its state: the
state it was given shares those buffers with the one it returns, and is not to be stepped again.
What still grows with max_context is attention reading the whole fixed-shape cache
(docs/benchmarks.md, "M: the transformer's step").
The step's attention is computed by hand from the Keras MultiHeadAttention layer's own
projections and scaling, so training (the layer itself) and stepping share the same weights,
checkpoints and exports.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from wm.models import mdn
from wm.models.base import Prediction, SequenceModel, head_input

if TYPE_CHECKING:
  from wm.config import SeqConfig


def attend(layer: tf.keras.layers.MultiHeadAttention, query: tf.Tensor, keys: tf.Tensor,
           values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Attention of projected queries [B, N, T, D] over keys and values [B, N, S, D] where mask
  [B or 1, T, S] allows -> [B, T, N, D]: what `layer` computes between its projections (TF
  backend's dot_product_attention: logits scaled by 1/sqrt(key_dim), masked out by a large
  negative). Heads lead, so the products read the cache as it lies, with no transposed copy."""
  logits = tf.matmul(query, keys, transpose_b=True) * (1.0 / math.sqrt(float(layer.key_dim)))
  logits = tf.where(mask[:, None], logits, tf.constant(-1e9, logits.dtype))
  return tf.transpose(tf.matmul(tf.nn.softmax(logits, -1), values), [0, 2, 1, 3])


def fresh_zeros(shape: list) -> tf.Tensor:
  """A float32 zero tensor in a buffer of its own, which `write` may update in place: TensorFlow's
  Empty op is never constant-folded or shared, unlike tf.zeros inside a tf.function."""
  return tf.raw_ops.Empty(shape=tf.stack(shape), dtype=tf.float32, init=True)


def write(buffer: tf.Tensor, rows: tf.Tensor, new: tf.Tensor) -> tf.Tensor:
  """buffer [B, ..., S, D] with new [B, ..., D] written at position rows [B] of each row's
  S axis, in place (the returned tensor is `buffer`, updated): one row of D per slot, where an
  out-of-place update would copy the whole buffer."""
  shape = tf.shape(buffer)
  slots, size = shape[1:-2], shape[-2]  # the axes between the row and its positions (heads)
  per_row = tf.reduce_prod(slots)
  first = (tf.range(shape[0]) * per_row * size + rows)[:, None]  # [B, 1]: slot 0's row, at rows
  index = tf.reshape(first + tf.range(per_row)[None] * size, [-1])  # [B * heads]
  flat = tf.reshape(buffer, [-1, shape[-1]])
  values = tf.reshape(tf.cast(new, buffer.dtype), [-1, shape[-1]])
  return tf.reshape(tf.raw_ops.InplaceUpdate(x=flat, i=index, v=values), shape)


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

  def cached(self, x: tf.Tensor, mask: tf.Tensor, cache: tuple[tf.Tensor, tf.Tensor] | None = None,
             at: tf.Tensor | None = None) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
    """`call` with the attention by hand (`attend`) over a key/value cache. Without `cache`: over
    the tokens x [B, T, H] themselves (a causal pass, mask [1, T, T]). With cache = (keys, values)
    [B, N, S, D]: x holds one new token per row, whose key and value are written in place at
    position `at` [B] of its row; mask [B, 1, S] says which slots it sees. Returns
    (x, (keys, values))."""
    y, layer = self.norm1(x), self.attention
    kv = [tf.transpose(dense(y), [0, 2, 1, 3]) for dense in (layer.key_dense, layer.value_dense)]
    if cache is not None:
      kv = [write(old, at, new[:, :, 0]) for old, new in zip(cache, kv)]
    query = tf.transpose(layer.query_dense(y), [0, 2, 1, 3])
    x = x + layer.output_dense(attend(layer, query, *kv, mask))
    return x + self.mlp_out(self.mlp_in(self.norm2(x))), tuple(kv)


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

  def sequence_features(self, z: tf.Tensor, actions: tf.Tensor, training: bool = False,
                        precision: str = 'float32', resets: tf.Tensor | None = None) -> tf.Tensor:
    """Teacher forcing: z [B, T, Z], actions [B, T, A] with T <= max_context -> [B, T, H]
    (its blocks compute in float32 whatever the `precision`). With `resets` (packed rows) a
    step attends only to its own window's steps, at positions counted from the window's start."""
    del training, precision
    steps = tf.shape(z)[1]
    tf.debugging.assert_less_equal(steps, self.max_context,
                                   message='sequence longer than the transformer\'s max_context')
    causal = tf.linalg.band_part(tf.ones([steps, steps], tf.bool), -1, 0)[None]
    positions = tf.range(steps)[None]
    if resets is not None:
      window = tf.cumsum(tf.cast(resets, tf.int32), axis=1)  # [B, T]: which window of the row
      causal = causal & tf.equal(window[:, :, None], window[:, None, :])
      positions = tf.reduce_sum(tf.cast(causal, tf.int32), axis=2) - 1  # its window's steps so far
    return self._hidden(tf.concat([z, actions], -1), positions, causal)

  def initial_state(self, batch_size: int) -> dict[str, Any]:
    """An empty window per row: tokens [B, C, Z+A] (left-aligned, index = position), keys and
    values per layer [B, N, C, D] (C = max_context), length [B], h (the last step's features)."""
    head_size = max(self.hidden_size // self.num_heads, 1)  # as Block's attention layer
    cache = [batch_size, self.num_heads, self.max_context, head_size]
    return {'tokens': fresh_zeros([batch_size, self.max_context, self.z_size + self.action_size]),
            'keys': tuple(fresh_zeros(cache) for _ in self.blocks),
            'values': tuple(fresh_zeros(cache) for _ in self.blocks),
            'length': tf.zeros([batch_size], tf.int32),
            'h': tf.zeros([batch_size, self.hidden_size])}

  def step(self, z: tf.Tensor, action: tf.Tensor, state: dict[str, Any],
           feature_mask: tf.Tensor | None = None, head_rows: tf.Tensor | int | None = None
           ) -> tuple[Prediction, dict[str, Any]]:
    """The new token at its row's next position, attending to the cache (module docstring).
    Consumes `state`: its buffers are written in place and become the returned state's."""
    state = tf.cond(tf.reduce_any(state['length'] >= self.max_context),
                    lambda: self._restart(state), lambda: dict(state))
    token, length = tf.concat([z, action], -1), state['length']
    visible = (tf.range(self.max_context)[None] <= length[:, None])[:, None]  # [B, 1, C]
    x = self.embed(token[:, None]) + self.positions(length[:, None])
    keys, values = [], []
    for block, cache in zip(self.blocks, zip(state['keys'], state['values'])):
      x, (k, v) = block.cached(x, visible, cache, length)
      keys.append(k)
      values.append(v)
    h = self.norm(x)[:, 0]
    return self.head(head_input(h, feature_mask, head_rows)), {
        'tokens': write(state['tokens'], length, token), 'keys': tuple(keys),
        'values': tuple(values), 'length': length + 1, 'h': h}

  def _restart(self, state: dict[str, Any]) -> dict[str, Any]:
    """Rows whose window is full keep its newest max_context//2 tokens at positions 0 .. k-1,
    with their keys and values from one causal pass over them; other rows are unchanged."""
    size, k = self.max_context, self.max_context // 2
    full = state['length'] >= size
    kept = state['tokens'][:, size - k:]

    def pick(new: tf.Tensor, old: tf.Tensor, axis: int) -> tf.Tensor:  # axis: positions
      padding = [[0, 0]] * new.shape.rank
      padding[axis] = [0, size - k]
      return tf.where(tf.reshape(full, [-1] + [1] * (old.shape.rank - 1)),
                      tf.pad(new, padding), old)

    keys, values = self._prefill(kept)
    return {'tokens': pick(kept, state['tokens'], 1),
            'keys': tuple(pick(n, o, 2) for n, o in zip(keys, state['keys'])),
            'values': tuple(pick(n, o, 2) for n, o in zip(values, state['values'])),
            'length': tf.where(full, k, state['length']), 'h': state['h']}

  def _prefill(self, tokens: tf.Tensor) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """Every layer's keys and values [B, N, T, D] of tokens [B, T, Z+A] at positions 0 .. T-1."""
    steps = tokens.shape[1]
    x = self.embed(tokens) + self.positions(tf.range(steps)[None])
    causal = tf.linalg.band_part(tf.ones([steps, steps], tf.bool), -1, 0)[None]
    keys, values = [], []
    for block in self.blocks:
      x, (k, v) = block.cached(x, causal)
      keys.append(k)
      values.append(v)
    return keys, values

  def features(self, state: dict[str, Any]) -> tf.Tensor:
    return state['h']

  def sample(self, prediction: Prediction, temperature: float = 1.0, seed: Any = None,
             rows: tf.Tensor | None = None, size: Any = None) -> tf.Tensor:
    return mdn.sample(prediction, temperature, seed, rows, size)
