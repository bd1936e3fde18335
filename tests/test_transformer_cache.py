"""The transformer's cached step (wm/models/transformer.py) equals a full causal pass over the
window its semantics define: the prefix while it fits in max_context, then after each restart the
newest max_context//2 steps at positions 0 .. k-1 and the steps since; eagerly, per row when rows
are at different lengths, and inside a tf.function loop as the dream runs it."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from wm.models.base import Prediction
from wm.models.transformer import Transformer

Z, A = 4, 3
FIELDS = [field.name for field in dataclasses.fields(Prediction)]


def make(max_context: int) -> Transformer:
  """Small random model; every weight moved off its initial value (zero biases included) so a
  step that drops a bias or a scale cannot agree by luck."""
  model = Transformer(Z, A, hidden_size=16, num_mixtures=2, num_layers=2, num_heads=2,
                      max_context=max_context)
  model.build_for_loading()
  rng = np.random.default_rng(max_context)
  for weight in model.weights:
    weight.assign(weight + rng.normal(size=weight.shape).astype(np.float32) * 0.3)
  return model


def inputs(batch: int, steps: int, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
  return (tf.random.stateless_normal([batch, steps, Z], (seed, 1)),
          tf.random.stateless_uniform([batch, steps, A], (seed, 2), -1, 1))


def windows(steps: int, max_context: int) -> list[list[int]]:
  """The steps (0-based) in the window after each of `steps` steps, by the module's rule: a full
  window restarts from its newest max_context//2 steps, then the new step is appended."""
  window, out = [], []
  for t in range(steps):
    if len(window) == max_context:
      window = window[max_context - max_context // 2:]
    window.append(t)
    out.append(list(window))
  return out


def assert_step_equals_pass(model, prediction, h, z, actions, window, rows=slice(None)):
  """prediction/h (the step's, for `rows`) equal a full pass over the window's steps."""
  z, actions = tf.gather(z, window, axis=1), tf.gather(actions, window, axis=1)
  full, features = model.predict_sequence(z, actions), model.sequence_features(z, actions)
  for name in FIELDS:
    np.testing.assert_allclose(getattr(prediction, name).numpy()[rows],
                               getattr(full, name)[:, -1].numpy(), atol=1e-5, err_msg=name)
  np.testing.assert_allclose(h.numpy()[rows], features[:, -1].numpy(), atol=1e-5)


def test_steps_within_the_context_equal_the_training_pass():
  model = make(max_context=8)
  z, actions = inputs(3, 8, seed=1)
  whole = model.predict_sequence(z, actions)
  features = model.sequence_features(z, actions)
  state = model.initial_state(3)
  for t in range(8):
    prediction, state = model.step(z[:, t], actions[:, t], state)
    for name in FIELDS:
      np.testing.assert_allclose(getattr(prediction, name).numpy(),
                                 getattr(whole, name)[:, t].numpy(), atol=1e-5, err_msg=name)
    np.testing.assert_allclose(model.features(state).numpy(), features[:, t].numpy(), atol=1e-5)


@pytest.mark.parametrize('max_context', [2, 4, 5])
def test_steps_past_the_context_equal_a_pass_over_their_window(max_context):
  """Row 0 has `lead` steps of history more than row 1, so they restart at different steps."""
  model = make(max_context)
  lead, steps = 3, 3 * max_context + 2
  z, actions = inputs(2, lead + steps, seed=2)
  state = model.initial_state(2)
  for t in range(lead):
    _, state = model.step(z[:, t], actions[:, t], state)
  state = tf.nest.map_structure(lambda old, new: tf.concat([old[:1], new[1:]], 0), state,
                                model.initial_state(2))
  for t in range(lead, lead + steps):
    prediction, state = model.step(z[:, t], actions[:, t], state)
    h = model.features(state)
    assert_step_equals_pass(model, prediction, h, z[:1], actions[:1],
                            windows(t + 1, max_context)[-1], rows=slice(0, 1))
    window = [lead + s for s in windows(t + 1 - lead, max_context)[-1]]
    assert_step_equals_pass(model, prediction, h, z[1:], actions[1:], window, rows=slice(1, 2))


def test_steps_inside_a_tf_function_loop_equal_a_pass_over_their_window():
  model = make(max_context=4)
  steps = 11
  z, actions = inputs(3, steps, seed=3)

  @tf.function
  def run(z, actions):  # as wm/dream.py: the state carried by a tf.while_loop
    state = model.initial_state(3)
    outputs = tf.TensorArray(tf.float32, size=steps)
    for t in tf.range(steps):
      prediction, state = model.step(z[:, t], actions[:, t], state)
      outputs = outputs.write(t, tf.concat([prediction.means[..., 0], prediction.reward[:, None],
                                            model.features(state)], -1))
    return outputs.stack()

  got = run(z, actions).numpy()
  for t, window in enumerate(windows(steps, 4)):
    z_t, actions_t = tf.gather(z, window, axis=1), tf.gather(actions, window, axis=1)
    full, features = model.predict_sequence(z_t, actions_t), model.sequence_features(z_t, actions_t)
    expected = tf.concat([full.means[:, -1, :, 0], full.reward[:, -1:], features[:, -1]], -1)
    np.testing.assert_allclose(got[t], expected.numpy(), atol=1e-5, err_msg=f'step {t}')
