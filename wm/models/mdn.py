"""M's output: a mixture of Gaussians per latent dimension, a reward and an episode-end logit.

Shared by every sequence model (wm/models/mdnrnn.py, wm/models/transformer.py):

    PredictionHead   features [..., H] -> Prediction (logits, means, log_stds [..., Z, K],
                     reward [...], done_logit [...]): a dense layer, then `unpack`
    log_prob         log p(x) of a mixture, per latent dimension, by log-sum-exp
    sample           a draw at a temperature (the paper's: logits / T, stds * sqrt(T))
    losses           the training terms, masked: latent NLL, reward NLL, done NLL

The mixture likelihood is written out with log-sum-exp rather than built from tfp's
`MixtureSameFamily`: it computes the same value (tests/test_mdn.py) and is faster in the training
step (scripts/benchmark_seq.py).

Episode end: the done head learns `terminated` only, not `truncated`. Truncation is the env's time
limit; nothing in a window of latents tells how far into the episode it is, so a model trained on
it would learn noise. A dream applies its own time limit (env.max_steps) instead.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from wm import hardware
from wm.models.base import Prediction

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class PredictionHead(tf.keras.layers.Layer):
  """One dense layer from features to every parameter of a Prediction."""

  def __init__(self, z_size: int, num_mixtures: int, **kwargs):
    super().__init__(**kwargs)
    self.z_size, self.num_mixtures = z_size, num_mixtures
    self.dense = tf.keras.layers.Dense(z_size * num_mixtures * 3 + 2, name='dense')

  def call(self, features: tf.Tensor) -> Prediction:
    return self.unpack(self.dense(features))

  def outputs(self, features: tf.Tensor, precision: str = 'float32') -> tf.Tensor:
    """The dense layer's outputs [..., Z * K * 3 + 2], its product in `precision` (float32 |
    bfloat16: seq.precision, for training)."""
    if precision != 'bfloat16':
      return self.dense(features)
    flat = tf.reshape(features, [-1, tf.shape(features)[-1]])
    outputs = hardware.matmul(flat, self.dense.kernel, precision) + self.dense.bias
    return tf.reshape(outputs, tf.concat([tf.shape(features)[:-1], [-1]], 0))

  def unpack(self, outputs: tf.Tensor) -> Prediction:
    """The dense layer's outputs [..., Z * K * 3 + 2] as a Prediction."""
    lead = tf.shape(outputs)[:-1]
    # One split (its gradient is one concatenation; slices' would be a padded copy each).
    mixture, reward, done_logit = tf.split(outputs, [self.z_size * 3 * self.num_mixtures, 1, 1],
                                           axis=-1)
    mixture = tf.reshape(mixture, tf.concat([lead, [self.z_size, 3 * self.num_mixtures]], 0))
    logits, means, log_stds = tf.split(mixture, 3, axis=-1)
    return Prediction(logits=logits, means=means, log_stds=log_stds, reward=reward[..., 0],
                      done_logit=done_logit[..., 0])


def log_prob(logits: tf.Tensor, means: tf.Tensor, log_stds: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
  """log p(x) per dimension: mixture parameters [..., Z, K], x [..., Z] -> [..., Z]."""
  x = x[..., None]
  normal = -0.5 * tf.square((x - means) * tf.exp(-log_stds)) - log_stds - _HALF_LOG_2PI
  return tf.reduce_logsumexp(tf.nn.log_softmax(logits, axis=-1) + normal, axis=-1)


def sample(prediction: Prediction, temperature: float = 1.0, seed: Any = None,
           rows: tf.Tensor | None = None, size: Any = None) -> tf.Tensor:
  """Draws x [..., Z]: a component from softmax(logits / T), then N(mean, std * sqrt(T)).

  `seed` None uses TensorFlow's global random state; a pair of ints (or an int32 [2] tensor)
  makes the draw a pure function of the seed (stateless ops, usable inside tf.function). With a
  seed, `rows` [B] and `size` say that the prediction's B rows are those rows of a batch of
  `size`: each row draws what it would in that batch (a dream that drops its ended episodes
  from the batch draws what it would have drawn without dropping them).
  """
  logits = prediction.logits / temperature
  if seed is None:
    uniform = tf.random.uniform(tf.shape(logits), 1e-20, 1.0)
    noise = tf.random.normal(tf.shape(prediction.means)[:-1])
  else:
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    if seed.shape.rank == 0:
      seed = tf.stack([seed, 0])
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape, normal_shape = tf.shape(logits), tf.shape(prediction.means)[:-1]
    if rows is not None:
      shape, normal_shape = (tf.concat([[size], s[1:]], 0) for s in (shape, normal_shape))
    uniform = tf.random.stateless_uniform(shape, seeds[0], 1e-20, 1.0)
    noise = tf.random.stateless_normal(normal_shape, seeds[1])
    if rows is not None:
      uniform, noise = tf.gather(uniform, rows), tf.gather(noise, rows)
  # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits).
  component = tf.argmax(logits - tf.math.log(-tf.math.log(uniform)), axis=-1)
  pick = tf.one_hot(component, tf.shape(logits)[-1], dtype=prediction.means.dtype)
  mean = tf.reduce_sum(pick * prediction.means, -1)
  std = tf.exp(tf.reduce_sum(pick * prediction.log_stds, -1))
  return mean + std * math.sqrt(temperature) * noise


def losses(prediction: Prediction, z_next: tf.Tensor, reward: tf.Tensor, done: tf.Tensor,
           mask: tf.Tensor, done_weight: float = 1.0) -> dict[str, tf.Tensor]:
  """Masked mean training terms over [B, T] steps, and the training loss as 'loss'.

  latent_nll: -log p(z_next), averaged over latent dimensions (the paper's scale);
  reward_nll: 0.5 * squared error (a unit-variance Gaussian's NLL without its constant);
  done_nll:   sigmoid cross-entropy of the done logit against `done` (terminated).
  loss:       their sum, with the done term's terminated steps weighted by `done_weight`
              (seq.done_weight). The weighted term is taken at logit + log(done_weight), whose
              optimum is log(done_weight) + the true log-odds: the logit itself stays calibrated
              (what the dream draws episode ends from), only the rare ends weigh more.
  """
  mask = tf.cast(mask, tf.float32)
  count = tf.maximum(tf.reduce_sum(mask), 1.0)

  def mean(x):
    return tf.reduce_sum(x * mask) / count

  latent = -tf.reduce_mean(log_prob(prediction.logits, prediction.means, prediction.log_stds,
                                    z_next), axis=-1)
  reward_term = 0.5 * tf.square(prediction.reward - reward)
  done = tf.cast(done, tf.float32)
  done_term = tf.nn.sigmoid_cross_entropy_with_logits(done, prediction.done_logit)
  terms = {'latent_nll': mean(latent), 'reward_nll': mean(reward_term),
           'done_nll': mean(done_term)}
  if done_weight == 1.0:
    weighted = terms['done_nll']
  else:
    weighted = mean(tf.nn.weighted_cross_entropy_with_logits(
        done, prediction.done_logit + math.log(done_weight), done_weight))
  terms['loss'] = terms['latent_nll'] + terms['reward_nll'] + weighted
  return terms
