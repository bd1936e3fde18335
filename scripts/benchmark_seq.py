"""Benchmark M's training step: this pipeline's MDN-RNN vs a straightforward tfp Keras model.

Input:  nothing (random in-memory batches of the configured shape).
Output: sequence-steps/s (batch x sequence length per second) of both, side by side, and the ratio.

    python scripts/benchmark_seq.py [--batch_size=100 --sequence_length=100 --z_size=32
                                     --hidden_size=256 --num_mixtures=5 --steps=20 --rounds=3]

Both train the same LSTM and the same output layer (mixture, reward, done) with Adam and gradient
clipping, each step under one tf.function. The baseline scores the mixture with tfp's
`MixtureSameFamily(Categorical, Normal).log_prob`; ours is wm.seq_training.Trainer with the
hand-written log-sum-exp likelihood (wm/models/mdn.py). Rounds alternate between the two so a
machine busy with other work slows both alike; the median round counts.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer('batch_size', 100, 'Sequences per batch.')
flags.DEFINE_integer('sequence_length', 100, 'Steps per sequence.')
flags.DEFINE_integer('z_size', 32, 'Latent size.')
flags.DEFINE_integer('action_size', 3, 'Action size.')
flags.DEFINE_integer('hidden_size', 256, 'LSTM units.')
flags.DEFINE_integer('num_mixtures', 5, 'Gaussians per latent dimension.')
flags.DEFINE_integer('steps', 20, 'Timed training steps per round.')
flags.DEFINE_integer('rounds', 3, 'Alternating rounds per model.')


def baseline_step(z_size, action_size, hidden_size, num_mixtures, learning_rate=1e-3, clip=1.0):
  """A Keras functional LSTM model scored with tfp's MixtureSameFamily: the plain way."""
  import tensorflow as tf
  import tensorflow_probability as tfp
  tfd = tfp.distributions
  z_in = tf.keras.Input([None, z_size])
  a_in = tf.keras.Input([None, action_size])
  h = tf.keras.layers.LSTM(hidden_size, return_sequences=True)(
      tf.keras.layers.Concatenate()([z_in, a_in]))
  out = tf.keras.layers.Dense(z_size * num_mixtures * 3 + 2)(h)
  model = tf.keras.Model([z_in, a_in], out)
  optimizer = tf.keras.optimizers.Adam(learning_rate)

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      out = model([batch['z'], batch['actions']])
      shape = tf.concat([tf.shape(out)[:2], [z_size, 3 * num_mixtures]], 0)
      logits, means, log_stds = tf.split(tf.reshape(out[..., :-2], shape), 3, axis=-1)
      mixture = tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                      tfd.Normal(means, tf.exp(log_stds)))
      mask = batch['mask']
      count = tf.reduce_sum(mask)
      latent = -tf.reduce_sum(tf.reduce_mean(mixture.log_prob(batch['z_next']), -1) * mask)
      reward = tf.reduce_sum(0.5 * tf.square(out[..., -2] - batch['reward']) * mask)
      done = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(batch['done'], out[..., -1])
                           * mask)
      loss = (latent + reward + done) / count
    grads = tape.gradient(loss, model.trainable_variables)
    grads, _ = tf.clip_by_global_norm(grads, clip)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return step, model.count_params()


def rate(step, batch, steps) -> float:
  step(batch)  # trace and warm up
  step(batch)
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(batch)
  float(loss if not isinstance(loss, dict) else loss['loss'])
  return steps * FLAGS.batch_size * FLAGS.sequence_length / (time.perf_counter() - start)


def main(argv):
  del argv
  import numpy as np
  import tensorflow as tf

  from wm.models.mdnrnn import MDNRNN
  from wm.seq_training import Trainer

  b, t, z, a = FLAGS.batch_size, FLAGS.sequence_length, FLAGS.z_size, FLAGS.action_size
  rng = np.random.default_rng(0)
  batch = {'z': rng.normal(size=(b, t, z)), 'actions': rng.uniform(-1, 1, (b, t, a)),
           'z_next': rng.normal(size=(b, t, z)), 'reward': rng.normal(size=(b, t)),
           'done': (rng.uniform(size=(b, t)) < 0.01), 'mask': np.ones((b, t))}
  batch = {k: tf.constant(v, tf.float32) for k, v in batch.items()}
  ours = MDNRNN(z, a, FLAGS.hidden_size, FLAGS.num_mixtures)
  trainer = Trainer(ours, 1e-3, grad_clip=1.0)
  baseline, baseline_params = baseline_step(z, a, FLAGS.hidden_size, FLAGS.num_mixtures)
  assert baseline_params == ours.count_params(), (baseline_params, ours.count_params())
  results = {'ours': [], 'tfp': []}
  for _ in range(FLAGS.rounds):
    results['tfp'].append(rate(baseline, batch, FLAGS.steps))
    results['ours'].append(rate(trainer.train_step, batch, FLAGS.steps))
  median = {k: float(np.median(v)) for k, v in results.items()}
  print(f'M training, batch {b} x {t} steps, z {z}, LSTM {FLAGS.hidden_size}, '
        f'{FLAGS.num_mixtures} mixtures, {ours.count_params():,} parameters each')
  print(f'  tfp MixtureSameFamily Keras model : {median["tfp"]:>9,.0f} sequence-steps/s '
        f'(rounds: {", ".join(f"{r:,.0f}" for r in results["tfp"])})')
  print(f'  MDNRNN + hand-written mixture NLL : {median["ours"]:>9,.0f} sequence-steps/s '
        f'(rounds: {", ".join(f"{r:,.0f}" for r in results["ours"])})')
  print(f'  ratio: {median["ours"] / median["tfp"]:.2f}x')


if __name__ == '__main__':
  app.run(main)
