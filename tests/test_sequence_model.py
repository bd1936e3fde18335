"""Sequence models (M): single steps agree with the batched training call, sampling, export, and
a tiny model learning the synthetic toy dynamics."""

import os

import numpy as np
import pytest
import tensorflow as tf

from wm import sequences
from wm.stages import shard
from wm.config import SeqConfig
from wm.models import export, fused_lstm, registry
from wm.stages.seq import Trainer, model_kwargs

KINDS = ['mdnrnn', 'transformer']
Z, A = 4, 3


def make(kind, **overrides):
  seq = SeqConfig(model=kind, hidden_size=16, num_mixtures=2, sequence_length=6, num_layers=1,
                  num_heads=2)
  for key, value in overrides.items():
    setattr(seq, key, value)
  kwargs = model_kwargs(seq, Z, A)
  model = registry.sequence_model_class(kind)(**kwargs)
  model.build_for_loading()
  return model, kwargs


@pytest.mark.parametrize('kind', KINDS)
def test_step_matches_the_sequence_call_and_samples(kind):
  model, _ = make(kind)
  z = tf.random.stateless_normal([2, 6, Z], (1, 2))
  actions = tf.random.stateless_uniform([2, 6, A], (3, 4), -1, 1)
  whole = model.predict_sequence(z, actions)
  assert whole.logits.shape == (2, 6, Z, 2) and whole.reward.shape == (2, 6)
  state = model.initial_state(2)
  assert model.features(state).shape == (2, model.feature_size)
  for t in range(6):
    prediction, state = model.step(z[:, t], actions[:, t], state)
    np.testing.assert_allclose(prediction.means.numpy(), whole.means[:, t].numpy(), atol=1e-4)
    np.testing.assert_allclose(prediction.done_logit.numpy(), whole.done_logit[:, t].numpy(),
                               atol=1e-4)
  assert model.features(state).shape == (2, model.feature_size)
  draw = model.sample(prediction, temperature=1.2, seed=(5, 6))
  assert draw.shape == (2, Z) and np.all(np.isfinite(draw.numpy()))
  np.testing.assert_array_equal(draw.numpy(), model.sample(prediction, 1.2, seed=(5, 6)).numpy())
  assert model.sample(prediction).shape == (2, Z)


@pytest.mark.parametrize('kind', KINDS)
def test_frozen_step_in_bfloat16_follows_the_float32_step(kind):
  # controller.dream_precision=bfloat16: the dream's M with its products in bfloat16 (8 bits of
  # mantissa) tracks the float32 step to bfloat16's rounding over a dozen steps; a model without
  # that path says it stays in float32.
  model, _ = make(kind, hidden_size=64)
  step, precision = model.frozen_step('bfloat16')
  assert precision == ('bfloat16' if kind == 'mdnrnn' else 'float32')
  assert model.frozen_step('float32') == (model.step, 'float32')
  z = tf.random.stateless_normal([8, 12, Z], (1, 2))
  actions = tf.random.stateless_uniform([8, 12, A], (3, 4), -1, 1)
  exact, fast = model.initial_state(8), model.initial_state(8)
  for t in range(12):
    want, exact = model.step(z[:, t], actions[:, t], exact)
    got, fast = step(z[:, t], actions[:, t], fast)
    for field in ('logits', 'means', 'log_stds', 'reward', 'done_logit'):
      a, b = getattr(want, field).numpy(), getattr(got, field).numpy()
      assert b.dtype == np.float32
      np.testing.assert_allclose(b, a, atol=0.03, rtol=0.03, err_msg=f'{field} at step {t}')
  if precision == 'bfloat16':
    assert not np.array_equal(want.means.numpy(), got.means.numpy())  # not the float32 path


@pytest.mark.parametrize('kind', KINDS)
def test_step_runs_inside_tf_function(kind):
  model, _ = make(kind)

  @tf.function
  def dream(z, steps=8):
    state = model.initial_state(3)
    for t in tf.range(steps):
      prediction, state = model.step(z, tf.zeros([3, A]), state)
      z = model.sample(prediction, 1.0, seed=tf.stack([t, 7]))
    return z, model.features(state)

  z, h = dream(tf.zeros([3, Z]))
  assert z.shape == (3, Z) and h.shape == (3, model.feature_size)


@pytest.mark.parametrize('kind', KINDS)
def test_export_round_trip(kind, tmp_path):
  model, kwargs = make(kind)
  folder = export.save(model, str(tmp_path / 'export'), 'sequence_model', kind, kwargs, step=3)
  loaded = export.load(folder, kind='sequence_model')
  assert type(loaded) is type(model) and export.read_info(folder)['step'] == 3
  z, actions = tf.ones([1, 4, Z]), tf.ones([1, 4, A])
  np.testing.assert_allclose(loaded.predict_sequence(z, actions).means.numpy(),
                             model.predict_sequence(z, actions).means.numpy(), atol=1e-6)


def test_fused_lstm_equals_the_keras_layer():
  """Values and gradients (inputs, initial state, weights) of wm/models/fused_lstm.py's loops
  and of the Keras layer whose weights they use, eagerly and in a tf.function of unknown shape."""
  rng = np.random.default_rng(0)
  batch, steps, inputs, units = 3, 7, 5, 4
  x, u = (tf.constant(rng.normal(size=s), tf.float32)
          for s in ((batch, steps, inputs), (batch, steps, units)))
  h0, c0, u_h, u_c = (tf.constant(rng.normal(size=(batch, units)), tf.float32) for _ in range(4))
  layer = tf.keras.layers.LSTM(units, return_sequences=True, return_state=True)
  layer(x)
  for weight in layer.weights:  # away from the initial zero bias and orthogonal kernel
    weight.assign(weight + rng.normal(size=weight.shape).astype(np.float32) * 0.5)

  def values_and_gradients(x, fused):
    with tf.GradientTape() as tape:
      tape.watch([x, h0, c0])
      if fused:
        hs, (h, c) = fused_lstm.unroll(layer, x, (h0, c0))
      else:
        hs, h, c = layer(x, initial_state=[h0, c0])
      loss = tf.reduce_sum(hs * u) + tf.reduce_sum(h * u_h) + tf.reduce_sum(c * u_c)
    return [hs, h, c] + tape.gradient(loss, [x, h0, c0] + layer.weights)

  spec = tf.TensorSpec([None, None, inputs])
  compiled = tf.function(lambda x: values_and_gradients(x, True), input_signature=[spec])
  reference = values_and_gradients(x, False)
  for fused in (values_and_gradients(x, True), compiled(x)):
    for mine, theirs in zip(fused, reference):
      np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_fused_lstm_in_bfloat16_follows_float32():
  """seq.precision=bfloat16: the fused LSTM's products outside its loops (the input projection,
  the weights' and inputs' gradients) in bfloat16 give float32's values and gradients to
  bfloat16's rounding (8 bits of mantissa), and are not float32's own numbers. (The worst error
  over 12 initial weights: 0.005 of each tensor's largest value.)"""
  tf.keras.utils.set_random_seed(0)
  rng = np.random.default_rng(2)
  x = tf.constant(rng.normal(size=(4, 9, 6)), tf.float32)
  u = tf.constant(rng.normal(size=(4, 9, 32)), tf.float32)
  layer = tf.keras.layers.LSTM(32, return_sequences=True, return_state=True)
  layer(x)

  def values_and_gradients(precision):
    with tf.GradientTape() as tape:
      tape.watch(x)
      hs, _ = fused_lstm.unroll(layer, x, precision=precision)
      loss = tf.reduce_sum(hs * u)
    return [hs] + tape.gradient(loss, [x] + layer.weights)

  exact, fast = values_and_gradients('float32'), values_and_gradients('bfloat16')
  for name, a, b in zip(['hs', 'x', 'kernel', 'recurrent_kernel', 'bias'], exact, fast):
    a, b = a.numpy(), b.numpy()
    assert b.dtype == np.float32
    scale = np.abs(a).max()
    np.testing.assert_allclose(b, a, atol=0.02 * scale, err_msg=name)
    assert not np.array_equal(a, b), f'{name}: the bfloat16 path computed float32\'s numbers'


@pytest.mark.parametrize('kind', KINDS)
def test_trainer_in_bfloat16_follows_float32(kind):
  """Trainer(precision='bfloat16'): the loss and the gradient of a step are float32's to
  bfloat16's rounding, for both models (the transformer's blocks stay float32, its head does not).
  The gradient is compared whole: some of its parts are zero in exact arithmetic (an attention
  key's bias), where rounding is all there is. Over 12 initial weights the worst relative error was
  0.003 (mdnrnn) and 0.024 (transformer)."""
  tf.keras.utils.set_random_seed(0)
  model, _ = make(kind, hidden_size=32)
  rng = np.random.default_rng(3)
  batch = {'z': rng.normal(size=(3, 6, Z)), 'actions': rng.uniform(-1, 1, (3, 6, A)),
           'z_next': rng.normal(size=(3, 6, Z)), 'reward': rng.normal(size=(3, 6)),
           'done': np.eye(6)[[5, 2, 0]], 'mask': np.ones((3, 6))}
  batch = {key: tf.constant(value, tf.float32) for key, value in batch.items()}
  exact = Trainer(model, learning_rate=1e-3).gradients(batch)
  fast = Trainer(model, learning_rate=1e-3, precision='bfloat16').gradients(batch)
  np.testing.assert_allclose(fast[0]['loss'].numpy(), exact[0]['loss'].numpy(), rtol=0.01)
  flat = [np.concatenate([tf.convert_to_tensor(g).numpy().ravel() for g in grads])
          for grads in (fast[1], exact[1])]
  assert np.linalg.norm(flat[0] - flat[1]) < 0.06 * np.linalg.norm(flat[1])
  head = model.head.dense.kernel.path
  differs = [not np.array_equal(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy())
             for a, b, v in zip(fast[1], exact[1], exact[2]) if v.path == head]
  assert differs == [True]  # the head's product ran in bfloat16


@pytest.mark.parametrize('kind', KINDS)
def test_trainer_gradients_equal_autodiff_of_the_loss(kind):
  """Trainer.gradients (the loss compiled apart, its gradient carried back by the tape) equals
  one tape over the whole masked loss."""
  model, _ = make(kind)
  trainer = Trainer(model, learning_rate=1e-3)
  rng = np.random.default_rng(1)
  batch = {'z': rng.normal(size=(2, 6, Z)), 'actions': rng.uniform(-1, 1, (2, 6, A)),
           'z_next': rng.normal(size=(2, 6, Z)), 'reward': rng.normal(size=(2, 6)),
           'done': np.eye(6)[[5, 2]], 'mask': np.arange(6) < [[6], [3]]}
  batch = {key: tf.constant(value, tf.float32) for key, value in batch.items()}
  terms, grads, variables = trainer.gradients(batch)
  with tf.GradientTape() as tape:
    reference = trainer._terms(batch)
  expected = tape.gradient(reference['loss'], variables)
  assert len(grads) == len(model.trainable_variables) == len(expected)
  for key, value in reference.items():
    np.testing.assert_allclose(terms[key].numpy(), value.numpy(), rtol=1e-5)
  for mine, theirs, variable in zip(grads, expected, variables):
    np.testing.assert_allclose(tf.convert_to_tensor(mine).numpy(),  # embeddings: IndexedSlices
                               tf.convert_to_tensor(theirs).numpy(), rtol=1e-4, atol=1e-6,
                               err_msg=variable.path)


@pytest.mark.parametrize('grad_clip', [0.0, 1e-3])  # 1e-3: clipping binds
def test_bucketed_batches_weigh_each_real_step_alike(grad_clip):
  """seq.bucket_steps: a batch cut short of sequence_length L (Trainer's padded_length) steps
  with its padded twin's gradient, clipped, times its fill (real steps over batch x L): a short
  window's steps count no more than a long one's, as in padded batches."""
  model, _ = make('mdnrnn')
  rng = np.random.default_rng(2)
  length, real = 8, [[3], [2]]
  padded = {'z': rng.normal(size=(2, length, Z)), 'actions': rng.uniform(-1, 1, (2, length, A)),
            'z_next': rng.normal(size=(2, length, Z)), 'reward': rng.normal(size=(2, length)),
            'done': np.eye(length)[[2, 1]], 'mask': np.arange(length) < real}
  padded = {key: tf.constant(value, tf.float32) for key, value in padded.items()}
  cut = {key: value[:, :4] for key, value in padded.items()}  # its bucket: steps 1-4
  plain = Trainer(model, learning_rate=1e-3, grad_clip=grad_clip).step_gradients(padded)
  bucketed = Trainer(model, learning_rate=1e-3, grad_clip=grad_clip,
                     padded_length=length).step_gradients(cut)
  np.testing.assert_allclose(bucketed[0]['loss'].numpy(), plain[0]['loss'].numpy(), rtol=1e-5)
  fill = 5 / (2 * length)
  for weighted, whole in zip(bucketed[1], plain[1]):
    np.testing.assert_allclose(tf.convert_to_tensor(weighted).numpy(),
                               fill * tf.convert_to_tensor(whole).numpy(), rtol=1e-4, atol=1e-9)
  norm = tf.linalg.global_norm([tf.convert_to_tensor(g) for g in bucketed[1]]).numpy()
  if grad_clip:
    np.testing.assert_allclose(norm, fill * grad_clip, rtol=1e-4)


@pytest.mark.parametrize('kind', KINDS)
def test_a_packed_row_trains_as_its_windows_each_in_a_row_of_its_own(kind, monkeypatch):
  """seq.pack: windows of 5 and 3 steps laid end to end in one row (reset at each start) give
  the features, loss and gradients of the same windows as two padded rows: M restarts at the
  seam and learns nothing across it."""
  tf.keras.utils.set_random_seed(0)
  model, _ = make(kind, sequence_length=8)
  rng = np.random.default_rng(3)
  lengths, width = (5, 3), 8
  fields = {'z': (Z,), 'actions': (A,), 'z_next': (Z,), 'reward': (), 'done': ()}
  windows = [{key: rng.normal(size=(n, *shape)) for key, shape in fields.items()}
             for n in lengths]
  for window, n in zip(windows, lengths):
    window['done'] = (np.arange(n) == n - 1).astype(float)
    window['mask'] = np.ones(n)

  def row(parts):
    out = {key: np.zeros((width, *np.shape(parts[0][key])[1:])) for key in parts[0]}
    out['reset'] = np.zeros(width)
    at = 0
    for part in parts:
      n = len(part['mask'])
      for key, value in part.items():
        out[key][at:at + n] = value
      out['reset'][at] = 1
      at += n
    return out

  def batch(rows):
    return {key: tf.constant(np.stack([r[key] for r in rows]), tf.float32) for key in rows[0]}

  packed, padded = batch([row(windows)]), batch([row([w]) for w in windows])
  del padded['reset']
  features = model.sequence_features(packed['z'], packed['actions'], resets=packed['reset'])[0]
  alone = model.sequence_features(padded['z'], padded['actions'])
  np.testing.assert_allclose(features[:5].numpy(), alone[0, :5].numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(features[5:8].numpy(), alone[1, :3].numpy(), rtol=1e-5, atol=1e-6)
  if kind == 'mdnrnn':  # where cuDNN runs the LSTM (a GPU), packed rows step the cell instead
    monkeypatch.setattr(fused_lstm, 'enabled', lambda: False)
    stepped = model.sequence_features(packed['z'], packed['actions'], resets=packed['reset'])
    monkeypatch.undo()
    np.testing.assert_allclose(stepped[0].numpy(), features.numpy(), rtol=1e-5, atol=1e-6)
  trainer = Trainer(model, learning_rate=1e-3)
  (terms, grads, variables), (expected, expected_grads, _) = (
      trainer.gradients(packed), trainer.gradients(padded))
  np.testing.assert_allclose(terms['loss'].numpy(), expected['loss'].numpy(), rtol=1e-5)
  for mine, theirs, variable in zip(grads, expected_grads, variables):
    np.testing.assert_allclose(tf.convert_to_tensor(mine).numpy(),  # embeddings: IndexedSlices
                               tf.convert_to_tensor(theirs).numpy(), rtol=1e-4, atol=1e-6,
                               err_msg=variable.path)
  # The seam matters (so this test can fail): unmarked, the second window sees the first.
  unmarked = model.sequence_features(packed['z'], packed['actions'], resets=packed['reset'] * 0)
  assert np.abs(unmarked[0, 5:8].numpy() - alone[1, :3].numpy()).max() > 1e-3


@pytest.mark.parametrize('kind', KINDS)
def test_a_feature_mask_changes_only_what_the_head_reads(kind):
  """step(..., feature_mask): the head reads the features times the mask (the dream's dropout
  mask); ones change nothing, and the state is the unmasked step's."""
  model, _ = make(kind)
  z, action = tf.random.stateless_normal([3, Z], (1, 2)), tf.random.stateless_normal([3, A], (3, 4))
  mask = tf.cast(tf.random.stateless_uniform([3, model.feature_size], (5, 6)) < 0.5, tf.float32) * 2
  steps = [model.step] + ([model.frozen_step('bfloat16')[0]] if kind == 'mdnrnn' else [])
  for step in steps:
    plain, state = step(z, action, model.initial_state(3))
    ones, _ = step(z, action, model.initial_state(3), tf.ones_like(mask))
    masked, masked_state = step(z, action, model.initial_state(3), mask)
    np.testing.assert_allclose(ones.means.numpy(), plain.means.numpy(), rtol=1e-6)
    np.testing.assert_allclose(model.features(masked_state).numpy(),
                               model.features(state).numpy(), rtol=1e-6)
    expected = model.head(model.features(state) * mask)
    np.testing.assert_allclose(masked.done_logit.numpy(), expected.done_logit.numpy(),
                               rtol=2e-2, atol=2e-2)  # bfloat16's products
    assert not np.allclose(masked.done_logit.numpy(), plain.done_logit.numpy())


@pytest.mark.parametrize('kind', KINDS)
def test_head_rows_predicts_the_first_rows_and_steps_every_state(kind):
  """step(..., head_rows=n): the prediction of the first n rows only (a dream's judged rows skip
  M's head), as the whole step's, masked or not; every row's state steps as in the whole step."""
  model, _ = make(kind)
  z, action = tf.random.stateless_normal([5, Z], (1, 2)), tf.random.stateless_normal([5, A], (3, 4))
  mask = tf.cast(tf.random.stateless_uniform([5, model.feature_size], (5, 6)) < 0.5, tf.float32) * 2
  steps = [model.step] + ([model.frozen_step('bfloat16')[0]] if kind == 'mdnrnn' else [])
  for step in steps:
    for feature_mask in (None, mask):
      whole, state = step(z, action, model.initial_state(5), feature_mask)
      first, first_state = step(z, action, model.initial_state(5), feature_mask,
                                tf.constant(2))
      for field in ('logits', 'means', 'log_stds', 'reward', 'done_logit'):
        got, want = getattr(first, field).numpy(), getattr(whole, field).numpy()
        assert got.shape[0] == 2, (field, got.shape)
        np.testing.assert_allclose(got, want[:2], rtol=1e-5, atol=1e-6, err_msg=field)
      np.testing.assert_allclose(model.features(first_state).numpy(),
                                 model.features(state).numpy(), rtol=1e-6)
      assert model.features(first_state).shape[0] == 5


def test_dropout_acts_on_training_steps_only():
  """seq.dropout: the head reads a fresh random share of the features on every training step;
  evaluation (and every step outside training) reads them all."""
  model, _ = make('mdnrnn')
  plain, dropping = Trainer(model, learning_rate=1e-3), Trainer(model, 1e-3, dropout=0.5)
  rng = np.random.default_rng(2)
  batch = {'z': rng.normal(size=(2, 6, Z)), 'actions': rng.uniform(-1, 1, (2, 6, A)),
           'z_next': rng.normal(size=(2, 6, Z)), 'reward': rng.normal(size=(2, 6)),
           'done': np.eye(6)[[5, 2]], 'mask': np.ones((2, 6))}
  batch = {key: tf.constant(value, tf.float32) for key, value in batch.items()}
  first, second = (dropping.gradients(batch)[0]['loss'].numpy() for _ in range(2))
  whole = plain.gradients(batch)[0]['loss'].numpy()
  assert len({float(first), float(second), float(whole)}) == 3, (first, second, whole)
  for key, value in plain._terms(batch).items():
    np.testing.assert_allclose(dropping._terms(batch)[key].numpy(), value.numpy(), rtol=1e-6)


@pytest.mark.parametrize('kind,bucket_steps,pack', [*((kind, 0, False) for kind in KINDS),
                                                     ('mdnrnn', 4, False), ('mdnrnn', 0, True)])
def test_tiny_model_learns_the_toy_dynamics(kind, bucket_steps, pack, synthetic_encoded):
  # bucket_steps: batches of 4, 8 and 10 steps (seq.bucket_steps) train the same model; pack:
  # rows of windows end to end (seq.pack).
  tf.keras.utils.set_random_seed(0)
  model, _ = make(kind, hidden_size=32, sequence_length=10)
  trainer = Trainer(model, learning_rate=3e-3, grad_clip=1.0)
  def split(s):
    return shard.shard_paths(os.path.join(synthetic_encoded, 'encoded', s))
  train = sequences.train_batches(split('train'), 10, 8, shuffle_buffer=32, seed=0,
                                  bucket_steps=bucket_steps, pack=pack)
  valid = sequences.valid_batches(split('valid'), 10, 8)
  before = trainer.evaluate(valid, 10)
  for batch in train.take(200):
    trainer.train_step(batch)
  after = trainer.evaluate(valid, 10)
  # Untrained: ~1.25 nats per dimension; 200 steps reached -0.2 .. 0.15 in repeated runs (the
  # noise floor of the sampled inputs and targets is about -1.3). 0.6 nats less is a predicted
  # spread ~1.8x narrower.
  assert after['latent_nll'] < before['latent_nll'] - 0.6, (before, after)
  assert after['reward_nll'] < before['reward_nll'] / 2, (before, after)


def test_transformer_context_restarts_past_max_context():
  model, _ = make('transformer', sequence_length=4)  # max_context 4
  z = tf.random.stateless_normal([2, 7, Z], (8, 9))
  actions = tf.random.stateless_uniform([2, 7, A], (1, 1), -1, 1)
  state = model.initial_state(2)
  for t in range(7):
    prediction, state = model.step(z[:, t], actions[:, t], state)
  # Full after steps 0..3, the window restarted from steps 2, 3 (then 4, 5), and again from 4, 5:
  # after 7 steps it holds steps 4..6 at positions 0..2 (tests/test_transformer_cache.py).
  window = model.predict_sequence(z[:, 4:], actions[:, 4:])
  np.testing.assert_allclose(prediction.means.numpy(), window.means[:, -1].numpy(), atol=1e-4)
  np.testing.assert_allclose(model.features(state).numpy(), state['h'].numpy())
