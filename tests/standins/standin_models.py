"""Small real TF models behind the V and M interfaces, for the controller tests only.

They stand in for wm/models/vae.py and wm/models/mdnrnn.py while those are not on this branch:
a conv encoder and an LSTM with mixture, reward and done heads, exported and loaded through
wm/models/export.py like the real ones. `sitecustomize.py` beside this file registers them in
every process started with this folder on PYTHONPATH (scripts, pool workers, MPI ranks).
"""

from __future__ import annotations

import tensorflow as tf

from wm.models.base import ObservationEncoder, Prediction, SequenceModel


class StandinEncoder(ObservationEncoder):
  def __init__(self, z_size: int = 8, frame_size: int = 64, **kwargs):
    super().__init__(**kwargs)
    self.z_size, self.frame_shape = z_size, (frame_size, frame_size, 3)
    self.conv = tf.keras.layers.Conv2D(4, 8, strides=8, activation='relu')
    self.flat = tf.keras.layers.Flatten()
    self.out = tf.keras.layers.Dense(2 * z_size)
    self.dec = tf.keras.layers.Dense(frame_size * frame_size * 3, activation='sigmoid')

  def build_for_loading(self) -> None:
    self.decode(self.encode(tf.zeros([1, *self.frame_shape], tf.uint8))[0])
    self.built = True

  def encode(self, frames):
    x = tf.cast(frames, tf.float32)
    if frames.dtype == tf.uint8:
      x = x / 255.0
    mu, logvar = tf.split(self.out(self.flat(self.conv(x))), 2, axis=1)
    return mu, logvar

  def decode(self, z):
    return tf.reshape(self.dec(z), [-1, *self.frame_shape])


class StandinSeq(SequenceModel):
  def __init__(self, z_size: int = 8, action_size: int = 3, hidden_size: int = 16,
               num_mixtures: int = 2, **kwargs):
    super().__init__(**kwargs)
    self.z_size, self.action_size, self.feature_size = z_size, action_size, hidden_size
    self.k = num_mixtures
    self.cell = tf.keras.layers.LSTMCell(hidden_size)
    self.head = tf.keras.layers.Dense(3 * z_size * num_mixtures + 2)

  def build_for_loading(self) -> None:
    self.step(tf.zeros([1, self.z_size]), tf.zeros([1, self.action_size]), self.initial_state(1))
    self.built = True

  def initial_state(self, batch_size):
    zeros = tf.zeros([batch_size, self.feature_size])
    return (zeros, zeros)

  def step(self, z, action, state):
    h, (h, c) = self.cell(tf.concat([z, action], -1), list(state))
    out = self.head(h)
    mix = tf.reshape(out[:, :-2], [-1, self.z_size, self.k, 3])
    prediction = Prediction(mix[..., 0], mix[..., 1], mix[..., 2], out[:, -2], out[:, -1])
    return prediction, (h, c)

  def features(self, state):
    return state[0]

  def sample(self, prediction, temperature=1.0, seed=None):
    seed = tf.cast(seed, tf.int32)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    logits = prediction.logits / temperature
    pick = tf.random.stateless_categorical(tf.reshape(logits, [-1, self.k]), 1, seeds[0])
    pick = tf.reshape(pick, tf.shape(logits)[:-1])
    mean = tf.gather(prediction.means, pick, batch_dims=2)
    std = tf.exp(tf.gather(prediction.log_stds, pick, batch_dims=2)) * temperature ** 0.5
    return mean + std * tf.random.stateless_normal(tf.shape(mean), seeds[1])
