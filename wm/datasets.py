"""tf.data builders over the TFRecord shards: raw frames for V, whole rollouts for encoding,
latent rollouts for M.

Reading speed comes from one record per rollout (a rollout's frames decode in one op), GZIP
streams read in parallel across shards, and sampling on uint8 (float conversion is left to the
model, on its device). See scripts/benchmark_data.py for the measured rates.
"""

from __future__ import annotations

import tensorflow as tf

from wm import records, sharding
from wm.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
ENCODED_FORMAT = 'encoded-rollouts-v1'  # manifest format of RUN/encoded/<split>


def _files(paths: list[str], shuffle: bool, seed: int | None) -> tf.data.Dataset:
  files = tf.data.Dataset.from_tensor_slices(list(paths))
  return files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True) if shuffle else files


def raw_rollouts(paths: list[str], frames_only: bool = False, shuffle: bool = False,
                 seed: int | None = None, deterministic: bool = True) -> tf.data.Dataset:
  """One element per rollout: a dict of decoded arrays (see wm.records.parse_raw)."""
  files = _files(paths, shuffle, seed)
  data = files.interleave(records.read_one, cycle_length=min(len(paths), 8),
                          num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  return data.map(lambda x: records.parse_raw(x, frames_only), num_parallel_calls=AUTOTUNE,
                  deterministic=deterministic)


def raw_frames(paths: list[str], obs_sampled_per_rollout: int, shuffle_buffer: int,
               batch_size: int, seed: int | None = None, repeat: bool = True) -> tf.data.Dataset:
  """Batches of uint8 frames [batch, H, W, 3] for training V.

  Each time a rollout is read, `obs_sampled_per_rollout` of its frames (all, if it has fewer) are
  drawn without replacement; frames from many rollouts mix in a shuffle buffer.
  """
  data = raw_rollouts(paths, frames_only=True, shuffle=True, seed=seed, deterministic=False)
  if repeat:
    data = data.repeat()

  def sample(x):
    frames = x['frames']
    count = tf.minimum(tf.shape(frames)[0], obs_sampled_per_rollout)
    picks = tf.random.shuffle(tf.range(tf.shape(frames)[0]), seed=seed)[:count]
    return tf.gather(frames, picks)

  data = data.map(sample, num_parallel_calls=AUTOTUNE, deterministic=False).unbatch()
  data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  return data.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def encoded_rollouts(paths: list[str], shuffle: bool = False, seed: int | None = None,
                     deterministic: bool = True) -> tf.data.Dataset:
  """One element per latent rollout: a dict of decoded arrays (see wm.records.parse_encoded):
  mu, logvar [T+1, Z] float32, actions [T, A], rewards [T], terminated, truncated [T] bool."""
  files = _files(paths, shuffle, seed)
  data = files.interleave(records.read_one, cycle_length=max(1, min(len(paths), 8)),
                          num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  return data.map(records.parse_encoded, num_parallel_calls=AUTOTUNE,
                  deterministic=deterministic)


def encoded_sizes(split_dir: str) -> tuple[int, int]:
  """(z_size, action_size) of the encoded rollouts in `split_dir`, from its manifest.json."""
  manifest = sharding.read_manifest(split_dir)
  if manifest.get('format') != ENCODED_FORMAT:
    raise DataError(f'{split_dir}/{sharding.MANIFEST} has format {manifest.get("format")!r}, '
                    f'expected {ENCODED_FORMAT!r}; point at RUN/encoded/<split> '
                    '(written by scripts/encode_rollouts.py)')
  return int(manifest['z_size']), int(manifest['action_size'])
