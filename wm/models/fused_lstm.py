"""A Keras LSTM layer's whole-sequence pass, forward and backward each one XLA-compiled loop.

Same weights and function as `tf.keras.layers.LSTM` (gates i, f, c, o; sigmoid gates, tanh cell),
for training on a CPU, where the Keras layer runs its loop op by op:

- forward: the inputs of every step go through the kernel in one matrix product; the loop then
  does one product with the recurrent kernel a step, and XLA fuses the gate arithmetic around it;
- backward: back-propagation through time written out. The loop only carries the gradient back to
  the previous h and c; the gradients of all the weights are then one matrix product over all
  steps, where autodiff of the loop would accumulate them step by step.

Values and gradients equal the Keras layer's to float rounding (tests/test_sequence_model.py).
With seq.precision=bfloat16 the products outside the loops (the input projection, the weights'
and the inputs' gradients) take bfloat16 operands and give bfloat16 results: with the head's,
1.25x M's training step on a CPU with AMX (docs/benchmarks.md).
On a GPU the Keras layer runs cuDNN's fused kernel instead: `enabled` says which is used.
"""

from __future__ import annotations

import tensorflow as tf

from wm import hardware


def enabled() -> bool:
  """Whether MDNRNN trains with this module's loops: on CPUs, not where cuDNN can run."""
  return not tf.config.list_logical_devices('GPU')


def _forward_loop(projected, h0, c0, recurrent_kernel, keep=None):
  """projected [T, B, 4H] (x_t @ kernel + bias) -> hs, cs [T, B, H], gates [T, B, 4H]. With
  `keep` [T, B, 1] the state entering step t is multiplied by keep[t]: 0 starts a new sequence
  there (rows of packed windows), from the zero state."""
  steps = tf.shape(projected)[0]

  def body(t, h, c, hs, cs, gates):
    if keep is not None:
      h, c = h * keep[t], c * keep[t]
    i, f, g, o = tf.split(projected[t] + tf.matmul(h, recurrent_kernel), 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c + i * g
    h = o * tf.tanh(c)
    return t + 1, h, c, hs.write(t, h), cs.write(t, c), gates.write(t, tf.concat([i, f, g, o], -1))

  arrays = [tf.TensorArray(projected.dtype, size=steps) for _ in range(3)]
  _, _, _, hs, cs, gates = tf.while_loop(lambda t, *_: t < steps, body, [0, h0, c0, *arrays])
  return hs.stack(), cs.stack(), gates.stack()


def _backward_loop(d_hs, d_h, d_c, gates, cs, c0, recurrent_kernel, keep=None):
  """Gradients of the pre-activations dz [T, B, 4H] and of the initial state (h0, c0)."""
  steps = tf.shape(d_hs)[0]
  c_before = tf.concat([c0[None], cs[:-1]], 0)
  if keep is not None:
    c_before = c_before * keep
  back = tf.transpose(recurrent_kernel)

  def body(t, d_h, d_c, d_zs):
    i, f, g, o = tf.split(gates[t], 4, axis=-1)
    tanh_c = tf.tanh(cs[t])
    d_h = d_h + d_hs[t]
    d_c = d_c + d_h * o * (1 - tf.square(tanh_c))
    d_z = tf.concat([d_c * g * i * (1 - i), d_c * c_before[t] * f * (1 - f),
                     d_c * i * (1 - tf.square(g)), d_h * tanh_c * o * (1 - o)], -1)
    d_h, d_c = tf.matmul(d_z, back), d_c * f
    if keep is not None:  # nothing flows back past the start of a sequence
      d_h, d_c = d_h * keep[t], d_c * keep[t]
    return t - 1, d_h, d_c, d_zs.write(t, d_z)

  d_zs = tf.TensorArray(d_hs.dtype, size=steps)
  _, d_h0, d_c0, d_zs = tf.while_loop(lambda t, *_: t >= 0, body,
                                      [steps - 1, d_h, d_c, d_zs])
  return d_zs.stack(), d_h0, d_c0


_forward = tf.function(_forward_loop, jit_compile=True)
_backward = tf.function(_backward_loop, jit_compile=True)


def _make_unroll(precision: str, packed: bool):
  """The whole-sequence pass with its products outside the loops (the input projection, every
  weight's gradient, the inputs' gradient) in `precision`; the loops stay float32 (in bfloat16
  XLA's CPU loop is no faster: docs/benchmarks.md). `packed`: it takes `keep` [T, B, 1] too
  (see _forward_loop); without it the loops are traced without the products by keep."""

  def matmul(a, b, **kwargs):
    return hardware.matmul(a, b, precision, **kwargs)

  def unroll_sequence(x, h0, c0, kernel, recurrent_kernel, bias, keep=None):
    """Time-major x [T, B, I], state [B, H] -> (hs [T, B, H], h_T, c_T)."""
    steps, batch, inputs = tf.unstack(tf.shape(x))
    units = tf.shape(h0)[-1]
    flat_x = tf.reshape(x, [steps * batch, inputs])
    projected = tf.reshape(matmul(flat_x, kernel) + bias, [steps, batch, 4 * units])
    # No tape may record the compiled loop (this function's gradient is `grad`): an eager tape
    # would ask XLA for the loop's own autodiff, which it cannot compile.
    hs, cs, gates = _forward(*[tf.stop_gradient(t) for t in (projected, h0, c0, recurrent_kernel)],
                             keep=keep)

    def grad(d_hs, d_h_last, d_c_last):
      d_h = tf.zeros_like(h0) if d_h_last is None else d_h_last
      d_c = tf.zeros_like(c0) if d_c_last is None else d_c_last
      d_z, d_h0, d_c0 = _backward(d_hs, d_h, d_c, gates, cs, c0, recurrent_kernel, keep=keep)
      d_z = tf.reshape(d_z, [steps * batch, 4 * units])
      # Every weight's gradient in one product: the rows of [h_{t-1}, x_t, 1]^T d_z are the
      # recurrent kernel's, the kernel's and (input 1) the bias's.
      h_before = tf.concat([h0[None], hs[:-1]], 0)
      if keep is not None:
        h_before = h_before * keep
      h_before = tf.reshape(h_before, [steps * batch, units])
      ones = tf.ones([steps * batch, 1])
      d_weights = matmul(tf.concat([h_before, flat_x, ones], -1), d_z, transpose_a=True)
      d_recurrent, d_kernel, d_bias = tf.split(d_weights, [units, inputs, 1], axis=0)
      d_x = tf.reshape(matmul(d_z, kernel, transpose_b=True), tf.shape(x))
      return d_x, d_h0, d_c0, d_kernel, d_recurrent, d_bias[0]

    return (hs, hs[-1], cs[-1]), grad

  if packed:
    @tf.custom_gradient
    def unroll_packed(x, h0, c0, kernel, recurrent_kernel, bias, keep):
      outputs, grad = unroll_sequence(x, h0, c0, kernel, recurrent_kernel, bias, keep)
      return outputs, lambda *d: (*grad(*d), None)

    return unroll_packed
  return tf.custom_gradient(unroll_sequence)


_UNROLL = {(precision, packed): _make_unroll(precision, packed)
           for precision in ('float32', 'bfloat16') for packed in (False, True)}


def unroll(layer: tf.keras.layers.LSTM, x: tf.Tensor,
           state: tuple[tf.Tensor, tf.Tensor] | None = None, precision: str = 'float32',
           resets: tf.Tensor | None = None):
  """The layer's weights over batch-major x [B, T, I] -> (outputs [B, T, H], (h_T, c_T)), the
  products outside the loops in `precision` (float32 | bfloat16: seq.precision). `resets`
  [B, T] (1 where a packed row's next window starts): the state is zeroed before those steps,
  and no gradient flows back past them, as if each window were a row of its own."""
  cell = layer.cell
  if state is None:
    zeros = tf.zeros([tf.shape(x)[0], cell.units], x.dtype)
    state = (zeros, zeros)
  weights = [tf.convert_to_tensor(w) for w in (cell.kernel, cell.recurrent_kernel, cell.bias)]
  time_major = tf.transpose(x, [1, 0, 2])
  if resets is None:
    hs, h, c = _UNROLL[precision, False](time_major, *state, *weights)
  else:
    keep = 1.0 - tf.transpose(tf.cast(resets, x.dtype))[:, :, None]
    hs, h, c = _UNROLL[precision, True](time_major, *state, *weights, keep)
  return tf.transpose(hs, [1, 0, 2]), (h, c)
