"""TFRecord schemas of raw and encoded rollouts: one tf.train.Example per rollout.

Arrays are stored as raw bytes so a whole rollout decodes in one `tf.io.decode_raw` per field:

    raw      frames (T+1,H,W,3) uint8, actions (T,A) f32, rewards (T,) f32, terminated (T,) u8,
             truncated (T,) u8, steps T, frame_shape [H,W,3], action_size A, index, seed
    encoded  mu, logvar (T+1,Z) f32, actions, rewards, terminated, truncated, steps, z_size,
             action_size, index, seed

Shards are GZIP TFRecord files named `raw.tfrecord-00003-of-00074` / `encoded.tfrecord-...`.
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

COMPRESSION = 'GZIP'


def shard_name(prefix: str, shard: int, num_shards: int) -> str:
  return f'{prefix}.tfrecord-{shard:05d}-of-{num_shards:05d}'


def _bytes(array: np.ndarray) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(array).tobytes()]))


def _ints(values) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _common(rollout: dict[str, np.ndarray], index: int) -> dict[str, tf.train.Feature]:
  return {
      'actions': _bytes(rollout['actions'].astype(np.float32)),
      'rewards': _bytes(rollout['rewards'].astype(np.float32)),
      'terminated': _bytes(rollout['terminated'].astype(np.uint8)),
      'truncated': _bytes(rollout['truncated'].astype(np.uint8)),
      'steps': _ints([len(rollout['actions'])]),
      'action_size': _ints([rollout['actions'].shape[1]]),
      'index': _ints([index]),
      'seed': _ints([rollout['seed']]),
  }


def raw_example(rollout: dict[str, np.ndarray], index: int) -> bytes:
  features = _common(rollout, index)
  features['frames'] = _bytes(rollout['frames'])
  features['frame_shape'] = _ints(rollout['frames'].shape[1:])
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(
      deterministic=True)


def encoded_example(rollout: dict[str, np.ndarray], index: int) -> bytes:
  """`rollout` holds mu, logvar (T+1, Z) float32 and the raw rollout's other arrays."""
  features = _common(rollout, index)
  features['mu'] = _bytes(rollout['mu'].astype(np.float32))
  features['logvar'] = _bytes(rollout['logvar'].astype(np.float32))
  features['z_size'] = _ints([rollout['mu'].shape[1]])
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(
      deterministic=True)


_COMMON_SPEC = {
    'actions': tf.io.FixedLenFeature([], tf.string),
    'rewards': tf.io.FixedLenFeature([], tf.string),
    'terminated': tf.io.FixedLenFeature([], tf.string),
    'truncated': tf.io.FixedLenFeature([], tf.string),
    'steps': tf.io.FixedLenFeature([], tf.int64),
    'action_size': tf.io.FixedLenFeature([], tf.int64),
    'index': tf.io.FixedLenFeature([], tf.int64),
    'seed': tf.io.FixedLenFeature([], tf.int64),
}
RAW_SPEC = {**_COMMON_SPEC, 'frames': tf.io.FixedLenFeature([], tf.string),
            'frame_shape': tf.io.FixedLenFeature([3], tf.int64)}
ENCODED_SPEC = {**_COMMON_SPEC, 'mu': tf.io.FixedLenFeature([], tf.string),
                'logvar': tf.io.FixedLenFeature([], tf.string),
                'z_size': tf.io.FixedLenFeature([], tf.int64)}


def _decode_common(x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  steps = tf.cast(x['steps'], tf.int32)
  return {
      'actions': tf.reshape(tf.io.decode_raw(x['actions'], tf.float32), [steps, -1]),
      'rewards': tf.io.decode_raw(x['rewards'], tf.float32),
      'terminated': tf.cast(tf.io.decode_raw(x['terminated'], tf.uint8), tf.bool),
      'truncated': tf.cast(tf.io.decode_raw(x['truncated'], tf.uint8), tf.bool),
      'steps': steps, 'index': x['index'], 'seed': x['seed'],
  }


def parse_raw(serialized: tf.Tensor, frames_only: bool = False) -> dict[str, tf.Tensor]:
  """Decodes one raw rollout; `frames_only` skips everything but the frames."""
  x = tf.io.parse_single_example(serialized, RAW_SPEC)
  shape = tf.cast(x['frame_shape'], tf.int32)
  frames = tf.reshape(tf.io.decode_raw(x['frames'], tf.uint8), tf.concat([[-1], shape], 0))
  if frames_only:
    return {'frames': frames}
  return {**_decode_common(x), 'frames': frames}


def parse_encoded(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
  x = tf.io.parse_single_example(serialized, ENCODED_SPEC)
  z_size = tf.cast(x['z_size'], tf.int32)
  out = _decode_common(x)
  out['mu'] = tf.reshape(tf.io.decode_raw(x['mu'], tf.float32), [-1, z_size])
  out['logvar'] = tf.reshape(tf.io.decode_raw(x['logvar'], tf.float32), [-1, z_size])
  return out


def write(path: str, serialized_records, compress_level: int = 1) -> None:
  """Writes records to `path` (GZIP, zlib level `compress_level`: records.compress_level). The
  caller handles atomicity (wm.infra.fileio.atomic_path)."""
  options = tf.io.TFRecordOptions(compression_type=COMPRESSION, compression_level=compress_level)
  with tf.io.TFRecordWriter(path, options) as writer:
    for record in serialized_records:
      writer.write(record)


def read(paths: list[str]) -> tf.data.Dataset:
  return tf.data.TFRecordDataset(paths, compression_type=COMPRESSION)


def read_one(path: tf.Tensor) -> tf.data.Dataset:
  """The records of one shard (for Dataset.interleave), with a 4 MB read buffer."""
  return tf.data.TFRecordDataset(path, compression_type=COMPRESSION, buffer_size=4 << 20)


def check_file(path: str, parse=None) -> str | None:
  """Reads every record of a shard (CRCs, GZIP stream, optional parse); the error or None."""
  try:
    count = 0
    for record in read([path]):
      if parse is not None:
        parse(record)
      count += 1
    return None if count else 'no records'
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
          tf.errors.OutOfRangeError) as e:
    return f'{type(e).__name__}: {clean_message(e.message or str(e))}'


def clean_message(message: str) -> str:
  """The readable part of a TensorFlow runtime error message."""
  message = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', message.splitlines()[0])
  return re.sub(r'\s*\[Op:\w+\].*$', '', message).strip()
