"""The mixture-density output: hand-written likelihood vs tfp, sampling, masked losses."""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from wm.models import mdn
from wm.models.base import Prediction

tfd = tfp.distributions


def random_prediction(rng, lead=(3, 5), z=4, k=3, scale=1.0):
  shape = (*lead, z, k)
  return Prediction(logits=tf.constant(rng.normal(size=shape) * 2, tf.float32),
                    means=tf.constant(rng.normal(size=shape) * 2, tf.float32),
                    log_stds=tf.constant(rng.normal(size=shape) * scale, tf.float32),
                    reward=tf.constant(rng.normal(size=lead), tf.float32),
                    done_logit=tf.constant(rng.normal(size=lead), tf.float32))


def test_log_prob_equals_tfp_mixture_same_family():
  rng = np.random.default_rng(0)
  p = random_prediction(rng)
  x = tf.constant(rng.normal(size=(3, 5, 4)) * 3, tf.float32)
  mine = mdn.log_prob(p.logits, p.means, p.log_stds, x)
  reference = tfd.MixtureSameFamily(tfd.Categorical(logits=p.logits),
                                    tfd.Normal(p.means, tf.exp(p.log_stds))).log_prob(x)
  assert mine.shape == (3, 5, 4)
  np.testing.assert_allclose(mine.numpy(), reference.numpy(), rtol=1e-5, atol=1e-4)


def test_sample_follows_the_mixture_and_temperature():
  # One dimension, two well separated components with weights 0.8 / 0.2.
  p = Prediction(logits=tf.math.log(tf.constant([[[0.8, 0.2]]])), means=tf.constant([[[-5., 5.]]]),
                 log_stds=tf.math.log(tf.constant([[[0.5, 0.5]]])), reward=tf.zeros([1]),
                 done_logit=tf.zeros([1]))
  tiled = Prediction(**{f.name: tf.tile(getattr(p, f.name), [20000] + [1] * (getattr(
      p, f.name).shape.rank - 1)) for f in dataclasses.fields(p)})
  x = mdn.sample(tiled, 1.0, seed=(3, 4)).numpy()[:, 0]
  assert abs((x < 0).mean() - 0.8) < 0.02, (x < 0).mean()
  assert abs(x[x < 0].std() - 0.5) < 0.03
  cold = mdn.sample(tiled, 0.25, seed=(3, 4)).numpy()[:, 0]
  # logits / 0.25 -> weights 0.8^4 : 0.2^4; stds * sqrt(0.25).
  assert (cold < 0).mean() > 0.99
  assert abs(cold[cold < 0].std() - 0.25) < 0.02
  again = mdn.sample(tiled, 1.0, seed=(3, 4)).numpy()[:, 0]
  np.testing.assert_array_equal(x, again)


def test_losses_ignore_masked_steps():
  rng = np.random.default_rng(2)
  p = random_prediction(rng, lead=(2, 6))
  z_next = tf.constant(rng.normal(size=(2, 6, 4)), tf.float32)
  reward = tf.constant(rng.normal(size=(2, 6)), tf.float32)
  done = tf.constant(rng.integers(0, 2, size=(2, 6)), tf.float32)
  mask = tf.constant([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], tf.float32)
  terms = mdn.losses(p, z_next, reward, done, mask)
  garbage = tf.where(mask[..., None] > 0, z_next, 1e6)
  assert np.isclose(float(terms['latent_nll']),
                    float(mdn.losses(p, garbage, reward, done, mask)['latent_nll']))
  expected = -np.mean(mdn.log_prob(p.logits, p.means, p.log_stds, z_next).numpy(), -1)
  expected = (expected * mask.numpy()).sum() / mask.numpy().sum()
  assert np.isclose(float(terms['latent_nll']), expected, rtol=1e-5)
  total = terms['latent_nll'] + terms['reward_nll'] + terms['done_nll']
  assert np.isclose(float(terms['loss']), float(total))


def test_a_done_weight_keeps_the_done_probability_calibrated():
  # 1 step in 20 ends: whatever seq.done_weight is, the loss is least where the done logit is
  # the true log-odds, so the dream's episode ends keep the data's rate.
  lead = (1, 200)
  done = np.zeros(lead, np.float32)
  done[0, ::20] = 1.0
  mask = tf.ones(lead)
  rng = np.random.default_rng(3)
  base = random_prediction(rng, lead=lead)
  truth = np.log(0.05 / 0.95)
  candidates = np.linspace(truth - 1, truth + 1, 201)

  def best_logit(weight):
    losses = [float(mdn.losses(dataclasses.replace(base, done_logit=tf.fill(lead, float(c))),
                               base.means[..., 0], base.reward, done, mask,
                               done_weight=weight)['loss']) for c in candidates]
    return candidates[int(np.argmin(losses))]

  for weight in (1.0, 10.0):
    assert abs(best_logit(weight) - truth) < 0.02, weight
  # The reported done_nll is the plain cross-entropy; only the loss weighs the ends more.
  at = dataclasses.replace(base, done_logit=tf.fill(lead, float(truth)))
  plain = mdn.losses(at, base.means[..., 0], base.reward, done, mask)
  weighted = mdn.losses(at, base.means[..., 0], base.reward, done, mask, done_weight=10.0)
  assert np.isclose(float(plain['done_nll']), float(weighted['done_nll']))
  assert float(weighted['loss']) > float(plain['loss'])
