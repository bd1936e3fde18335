"""The interfaces every model implements. Stages and play talk only to these.

    frames --ObservationEncoder.encode--> (mu, logvar) --sample--> z
    (z, action, state) --SequenceModel.step--> (Prediction of z', reward, done; new state)
    (z, SequenceModel.features(state)) --Controller--> action

The interaction loop of one real episode:

    state = seq.initial_state(batch)
    frame = env.reset()
    while not done:
      mu, logvar = encoder.encode(frame)
      action = controller(mu, seq.features(state))
      frame, reward, done = env.step(action)
      prediction, state = seq.step(mu, action, state)

A dream episode replaces the env by `seq.sample(prediction, temperature)` and the reward and done
heads of the prediction.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import tensorflow as tf


class ObservationEncoder(tf.keras.Model, abc.ABC):
  """Maps uint8 frames [B, H, W, 3] to a Gaussian latent and back (V)."""

  z_size: int  # latent size
  frame_shape: tuple[int, int, int]  # (H, W, 3) the encoder was built for

  @abc.abstractmethod
  def build_for_loading(self) -> None:
    """Creates every variable (e.g. by calling the model on zeros) so weights can be loaded."""

  @abc.abstractmethod
  def encode(self, frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 or [0, 1] float frames [B, H, W, 3] -> (mu, logvar), float32 [B, z_size] each."""

  @abc.abstractmethod
  def decode(self, z: tf.Tensor) -> tf.Tensor:
    """Latents [B, z_size] -> frames float32 [B, H, W, 3] in [0, 1]."""

  def compute_full_representation(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
    """What re-encoding stores per frame: {'mu': [B, Z], 'logvar': [B, Z]}."""
    mu, logvar = self.encode(frames)
    return {'mu': mu, 'logvar': logvar}


@dataclasses.dataclass
class Prediction:
  """M's prediction of the next step, batched over [B] (or [B, T] in training)."""
  logits: tf.Tensor  # mixture weights (unnormalised) [..., Z, K]
  means: tf.Tensor  # component means [..., Z, K]
  log_stds: tf.Tensor  # component log standard deviations [..., Z, K]
  reward: tf.Tensor  # predicted reward [...]
  done_logit: tf.Tensor  # logit of "the episode ends after this step" [...]


class SequenceModel(tf.keras.Model, abc.ABC):
  """Predicts the next latent, reward and episode end from latents and actions (M).

  A body turns (z, action) steps into features; one head (wm.models.mdn.PredictionHead) turns
  features into a Prediction. Training differentiates the two apart (wm/stages/seq.py).
  """

  z_size: int
  action_size: int
  feature_size: int  # size of features(state), the controller's extra input (h)
  cell_size: int = 0  # size of cell(state): the LSTM's c (controller.inputs=zch); 0 if none
  head: tf.keras.layers.Layer  # features [..., feature_size] -> Prediction

  def build_for_loading(self) -> None:
    """Creates every variable (a 2-step window of zeros) so weights can be loaded."""
    self.predict_sequence(tf.zeros([1, 2, self.z_size]), tf.zeros([1, 2, self.action_size]))
    self.built = True  # Keras tracks `built` only through call(); weights exist now

  @abc.abstractmethod
  def sequence_features(self, z: tf.Tensor, actions: tf.Tensor, training: bool = False,
                        precision: str = 'float32', resets: tf.Tensor | None = None) -> tf.Tensor:
    """Teacher forcing: z [B, T, Z], actions [B, T, A] -> features [B, T, feature_size];
    `precision` (seq.precision, resolved): the products the model can run in bfloat16.
    `resets` [B, T] (seq.pack): 1 where a row's next window starts; each window is then
    computed as a sequence of its own, from the initial state, seeing nothing before it."""

  def predict_sequence(self, z: tf.Tensor, actions: tf.Tensor,
                       training: bool = False) -> Prediction:
    """Teacher forcing: the prediction after each of T steps, over [B, T]."""
    return self.head(self.sequence_features(z, actions, training))

  def call(self, inputs, training: bool = False) -> Prediction:
    z, actions = inputs
    return self.predict_sequence(z, actions, training=training)

  @abc.abstractmethod
  def initial_state(self, batch_size: int) -> Any:
    """The state before the first step (a nest of tensors with leading dimension batch_size)."""

  @abc.abstractmethod
  def step(self, z: tf.Tensor, action: tf.Tensor, state: Any,
           feature_mask: tf.Tensor | None = None,
           head_rows: tf.Tensor | int | None = None) -> tuple[Prediction, Any]:
    """One step: z [B, Z], action [B, A] -> (prediction for the next step, new state).
    `feature_mask` [B, feature_size], if given, multiplies the features the head reads (a
    dropout mask a dream episode keeps: controller.dream_dropout); the state is unchanged by it.
    `head_rows` n, if given, predicts for the first n rows only, every row's state still
    stepping: a dream whose other rows a judge M predicts skips the head there (wm/dream.py)."""

  def frozen_step(self, precision: str = 'float32') -> tuple[Callable[..., Any], str]:
    """(`step` for weights that no longer change, e.g. the dream's, with its matrix products in
    `precision`: float32 | bfloat16, the weights cast once here; the precision it computes in).
    A model without a bfloat16 path gives its float32 `step`."""
    del precision
    return self.step, 'float32'

  @abc.abstractmethod
  def features(self, state: Any) -> tf.Tensor:
    """What the controller sees of the state: float32 [B, feature_size] (the LSTM's h)."""

  def cell(self, state: Any) -> tf.Tensor:
    """The memory beside the features, float32 [B, cell_size]: the LSTM's c. Models without
    one (cell_size 0) have nothing to give."""
    raise NotImplementedError(f'{type(self).__name__} has no cell state')

  @abc.abstractmethod
  def sample(self, prediction: Prediction, temperature: float = 1.0, seed: Any = None,
             rows: tf.Tensor | None = None, size: Any = None) -> tf.Tensor:
    """Draws the next latent [B, Z] from a prediction at `temperature`; with a seed, `rows` [B]
    and `size`, each row draws what row rows[i] of a batch of `size` would (wm/models/mdn.py)."""


def head_input(features: tf.Tensor, feature_mask: tf.Tensor | None = None,
               head_rows: tf.Tensor | int | None = None) -> tf.Tensor:
  """What a step's head reads (SequenceModel.step's last two arguments): the features [B, F],
  their first `head_rows` rows if given, times the feature mask's same rows if there is one."""
  if head_rows is not None:
    features = features[:head_rows]
    feature_mask = None if feature_mask is None else feature_mask[:head_rows]
  return features if feature_mask is None else features * feature_mask
