"""ConvVAE: the paper's convolutional variational autoencoder, the first ObservationEncoder (V).

    frame 64x64x3 -> conv 32, 64, 128, 256 (kernel 4, stride 2, relu) -> flatten 2x2x256
      -> dense mu, logvar [z_size]
    z -> dense 5x5x128 (relu) -> deconv 64 k5, 32 k6 (stride 2, relu) -> deconv 3 k6 sigmoid

`width` scales every channel count above but the frame's 3 (vae.width: 0.5 halves them, a
quarter of most convolutions' multiply-adds, for a cheaper V in the controller's loop).

The paper's decoder starts with Dense(1024), a 1x1x1024 map and a 1x1 -> 5x5 deconvolution; that
composition is a linear map z -> 5x5x128 followed by relu, so one Dense(5*5*128) computes the same
function class at a fraction of the cost on a CPU. Frames of another size are resized to 64x64 in
the encoder and the decoder's output is resized back.

Loss (per frame, averaged over the batch): squared error summed over pixels plus the KL
divergence to N(0, I) summed over latents, the KL clamped below at kl_tolerance * z_size (the
paper's free bits). With `mixed_precision` (vae.precision, resolved by wm/hardware.py) the
convolutions compute in bfloat16 (variables, the latent heads, the loss and every output stay
float32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tensorflow as tf

from wm import hardware
from wm.models.base import ObservationEncoder

if TYPE_CHECKING:
  from wm.config import Config

LAYERS = tf.keras.layers
CORE_SIZE = 64  # the frame size the convolution stack is built for


class ConvVAE(ObservationEncoder):
  """The paper's V. Constructor arguments are plain JSON values (wm/models/export.py saves them)."""

  @classmethod
  def kwargs_from_config(cls, config: Config) -> dict[str, Any]:
    """The constructor arguments the config asks for (plain JSON values: the export keeps them)."""
    kwargs = {'z_size': config.vae.z_size, 'frame_size': config.env.frame_size,
              'kl_tolerance': config.vae.kl_tolerance,
              'mixed_precision': hardware.precision(config.vae.precision) == 'bfloat16'}
    if config.vae.width != 1:  # named only when set: the paper's V keeps the identity it had
      kwargs['width'] = config.vae.width
    return kwargs

  def __init__(self, z_size: int = 32, frame_size: int = 64, kl_tolerance: float = 0.5,
               mixed_precision: bool = False, width: float = 1.0, **kwargs: Any):
    super().__init__(**kwargs)
    self.z_size = int(z_size)
    self.width = float(width)
    self.frame_size = int(frame_size)
    self.frame_shape = (self.frame_size, self.frame_size, 3)
    self.kl_tolerance = float(kl_tolerance)
    self.mixed_precision = bool(mixed_precision)
    compute = 'mixed_bfloat16' if self.mixed_precision else 'float32'
    # One attribute per layer (not lists): tf.train.Checkpoint tracks attributes of Keras 3
    # layers but not the lists Keras wraps, so layers in a list would be left out of checkpoints.
    for i, filters in enumerate((32, 64, 128, 256)):
      setattr(self, f'enc_conv{i}', LAYERS.Conv2D(self.channels(filters), 4, strides=2,
                                                   activation='relu', dtype=compute,
                                                   name=f'enc_conv{i}'))
    self.flatten = LAYERS.Flatten(dtype=compute)
    self.mu_head = LAYERS.Dense(self.z_size, dtype='float32', name='enc_mu')
    self.logvar_head = LAYERS.Dense(self.z_size, dtype='float32', name='enc_logvar')
    self.decoder_dense = LAYERS.Dense(5 * 5 * self.channels(128), activation='relu',
                                      dtype=compute, name='dec_dense')
    self.dec_deconv1 = LAYERS.Conv2DTranspose(self.channels(64), 5, strides=2, activation='relu',
                                              dtype=compute, name='dec_deconv1')
    self.dec_deconv2 = LAYERS.Conv2DTranspose(self.channels(32), 6, strides=2, activation='relu',
                                              dtype=compute, name='dec_deconv2')
    self.dec_deconv3 = LAYERS.Conv2DTranspose(3, 6, strides=2, dtype=compute, name='dec_deconv3')

  def channels(self, paper: int) -> int:
    """A layer's channel count: the paper's times `width`, at least 1."""
    return max(1, round(paper * self.width))

  @property
  def encoder_convs(self) -> list:
    return [self.enc_conv0, self.enc_conv1, self.enc_conv2, self.enc_conv3]

  @property
  def decoder_deconvs(self) -> list:
    return [self.dec_deconv1, self.dec_deconv2, self.dec_deconv3]

  def get_config(self) -> dict[str, Any]:
    return {'z_size': self.z_size, 'frame_size': self.frame_size,
            'kl_tolerance': self.kl_tolerance, 'mixed_precision': self.mixed_precision,
            'width': self.width}

  def build_for_loading(self) -> None:
    zeros = tf.zeros([1, *self.frame_shape], tf.uint8)
    self(zeros)

  # ------------------------------------------------------------------------ the model

  def to_float(self, frames: tf.Tensor) -> tf.Tensor:
    """uint8 frames -> float32 in [0, 1] (float frames are taken as already scaled)."""
    frames = tf.convert_to_tensor(frames)
    if frames.dtype == tf.uint8:
      return tf.cast(frames, tf.float32) / 255.0
    return tf.cast(frames, tf.float32)

  def encode(self, frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    x = self.to_float(frames)
    if self.frame_size != CORE_SIZE:
      x = tf.image.resize(x, [CORE_SIZE, CORE_SIZE])
    for conv in self.encoder_convs:
      x = conv(x)
    x = tf.cast(self.flatten(x), tf.float32)
    return self.mu_head(x), self.logvar_head(x)

  def decode(self, z: tf.Tensor) -> tf.Tensor:
    return tf.sigmoid(self.decode_logits(z))

  def decode_logits(self, z: tf.Tensor) -> tf.Tensor:
    x = tf.reshape(self.decoder_dense(z), [-1, 5, 5, self.channels(128)])
    for deconv in self.decoder_deconvs:
      x = deconv(x)
    x = tf.cast(x, tf.float32)
    if self.frame_size != CORE_SIZE:
      x = tf.image.resize(x, [self.frame_size, self.frame_size])
    return x

  @staticmethod
  def sample(mu: tf.Tensor, logvar: tf.Tensor, seed: Any = None,
             noise: tf.Tensor | None = None) -> tf.Tensor:
    """z = mu + sigma * eps, eps given as `noise`, drawn from `seed` (stateless), or drawn."""
    if noise is not None:
      eps = noise
    elif seed is None:
      eps = tf.random.normal(tf.shape(mu))
    else:
      eps = tf.random.stateless_normal(tf.shape(mu), seed)
    return mu + tf.exp(0.5 * logvar) * eps

  def call(self, frames: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
    """Frames -> {'mu', 'logvar', 'z', 'reconstruction'} (z sampled, reconstruction in [0, 1])."""
    del training
    mu, logvar = self.encode(frames)
    z = self.sample(mu, logvar)
    return {'mu': mu, 'logvar': logvar, 'z': z, 'reconstruction': self.decode(z)}

  def losses_for(self, frames: tf.Tensor, seed: Any = None,
                 noise: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """The training loss and its parts for a batch of frames (float32 scalars, means over the
    batch); `seed` or `noise` fixes the latent sample (see sample)."""
    target = self.to_float(frames)
    mu, logvar = self.encode(target)
    reconstruction = self.decode(self.sample(mu, logvar, seed, noise))
    recon = tf.reduce_mean(tf.reduce_sum(tf.square(target - reconstruction), axis=[1, 2, 3]))
    kl = -0.5 * tf.reduce_sum(1.0 + logvar - tf.square(mu) - tf.exp(logvar), axis=1)
    kl = tf.reduce_mean(tf.maximum(kl, self.kl_tolerance * self.z_size))
    return {'loss': recon + kl, 'recon': recon, 'kl': kl, 'reconstruction': reconstruction}
