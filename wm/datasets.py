"""tf.data builders over the TFRecord shards: raw frames for V, whole rollouts for encoding,
latent rollouts for M; and the error that names a corrupted shard when reading fails.

Reading speed comes from one record per rollout (a rollout's frames decode in one op), GZIP
streams read in parallel across shards, and sampling on uint8 (float conversion is left to the
model, on its device). See scripts/benchmark_data.py for the measured rates.
"""

from __future__ import annotations

import concurrent.futures
import os

import tensorflow as tf

from wm import records
from wm.distribute import InputShard
from wm.stages import shard
from wm.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
ALL = InputShard(0, 1, 0)  # one input pipeline reading every rollout
ENCODED_FORMAT = 'encoded-rollouts-v1'  # manifest format of RUN/encoded/<split>
# Manifest format -> its shards' name prefix, the stage script that writes them, and what a rerun
# of it does with a missing shard (shard.shard_complete is False for it).
WRITERS = {
    shard.FORMAT: ('raw', 'shard_rollouts.py',
                      'it writes missing shards again from {run}/rollouts'),
    ENCODED_FORMAT: ('encoded', 'encode_rollouts.py',
                     'it encodes missing outputs again from {run}/records with the encoder in '
                     '{run}/vae/export'),
}


def stream_seed(seed: int, start_step: int) -> int:
  """The seed of a training data stream that starts (or resumes) at `start_step`: the same run
  reads the same stream on every rerun, and a resumed one a stream of its own."""
  return seed * 1_000_003 + start_step


def _files(paths: list[str], shuffle: bool, seed: int | None) -> tf.data.Dataset:
  files = tf.data.Dataset.from_tensor_slices(list(paths))
  return files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True) if shuffle else files


def raw_rollouts(paths: list[str], frames_only: bool = False, shuffle: bool = False,
                 seed: int | None = None, shard: InputShard | None = None) -> tf.data.Dataset:
  """One element per rollout: a dict of decoded arrays (see wm.records.parse_raw); with `shard`,
  only that input pipeline's part of the rollouts (see InputShard.files_or_records)."""
  paths, index, count = (shard or ALL).files_or_records(paths)
  files = _files(paths, shuffle, seed)
  data = files.interleave(records.read_one, cycle_length=min(len(paths), 8),
                          num_parallel_calls=AUTOTUNE)
  if count > 1:
    data = data.shard(count, index)
  return data.map(lambda x: records.parse_raw(x, frames_only), num_parallel_calls=AUTOTUNE)


def raw_frames(paths: list[str], obs_sampled_per_rollout: int, shuffle_buffer: int,
               batch_size: int, seed: int = 0, repeat: bool = True,
               shard: InputShard | None = None) -> tf.data.Dataset:
  """Batches of uint8 frames [batch_size, H, W, 3] for training V, from all the rollouts or from
  `shard`'s part of them.

  Each time a rollout is read, `obs_sampled_per_rollout` of its frames (all, if it has fewer) are
  drawn without replacement; frames from many rollouts mix in a shuffle buffer. The stream is a
  function of `seed`: the rollouts' order is seeded and each rollout's draw is keyed by its
  position in the stream, so the same seed gives the same batches on every run.
  """
  data = raw_rollouts(paths, frames_only=True, shuffle=True, seed=seed, shard=shard)
  if repeat:
    data = data.repeat()

  def sample(position, x):
    frames = x['frames']
    count = tf.minimum(tf.shape(frames)[0], obs_sampled_per_rollout)
    key = tf.stack([tf.constant(seed, tf.int64), position])
    picks = tf.argsort(tf.random.stateless_uniform(tf.shape(frames)[:1], key))[:count]
    return tf.gather(frames, picks)

  data = data.enumerate().map(sample, num_parallel_calls=AUTOTUNE).unbatch()
  data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  return data.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def encoded_rollouts(paths: list[str], shuffle: bool = False, seed: int | None = None,
                     shard: InputShard | None = None) -> tf.data.Dataset:
  """One element per latent rollout: a dict of decoded arrays (see wm.records.parse_encoded):
  mu, logvar [T+1, Z] float32, actions [T, A], rewards [T], terminated, truncated [T] bool. With
  `shard`, only that input pipeline's part (see InputShard.files_or_records)."""
  paths, index, count = (shard or ALL).files_or_records(paths)
  files = _files(paths, shuffle, seed)
  data = files.interleave(records.read_one, cycle_length=max(1, min(len(paths), 8)),
                          num_parallel_calls=AUTOTUNE)
  if count > 1:
    data = data.shard(count, index)
  return data.map(records.parse_encoded, num_parallel_calls=AUTOTUNE)


def encoded_sizes(split_dir: str) -> tuple[int, int]:
  """(z_size, action_size) of the encoded rollouts in `split_dir`, from its manifest.json."""
  manifest = shard.read_manifest(split_dir)
  if manifest.get('format') != ENCODED_FORMAT:
    raise DataError(f'{split_dir}/{shard.MANIFEST} has format {manifest.get("format")!r}, '
                    f'expected {ENCODED_FORMAT!r}; point at RUN/encoded/<split> '
                    '(written by scripts/encode_rollouts.py)')
  return int(manifest['z_size']), int(manifest['action_size'])


def manifest_mismatch(path: str, entry: dict) -> str | None:
  """How shard `path` differs from its manifest entry (size, then sha256), or None."""
  if not os.path.exists(path):
    return 'missing'
  size = os.path.getsize(path)
  if size != entry['bytes']:
    return f'size {size} bytes, manifest says {entry["bytes"]}'
  if shard.sha256(path) != entry['sha256']:
    return 'sha256 differs from the manifest (the file changed after it was written)'
  return None


def changed_shards(split_dirs: list[str]) -> list[str]:
  """`path: reason` for each shard listed in the splits' manifests that differs from its entry.

  Hashes every shard (a few at once): sha256 runs at ~700 MB/s a core here, so this is for when
  reading has failed, not for every start.
  """
  listed = [(os.path.join(d, entry['file']), entry) for d in split_dirs
            for entry in shard.read_manifest(d)['shards']]
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    reasons = pool.map(lambda item: manifest_mismatch(*item), listed)
    return [f'{path}: {reason}' for (path, _), reason in zip(listed, reasons) if reason]


def read_error(error: tf.errors.OpError, split_dirs: list[str], run_dir: str,
               then: str) -> DataError:
  """The DataError for `error` (a DataLossError from reading the shards of `split_dirs`).

  It names the shards whose checksum differs from their manifest.json, and says how to list every
  bad shard and how to write them again; `then` says what rerunning the failed stage does.
  """
  root = os.path.dirname(split_dirs[0])  # RUN/records or RUN/encoded
  fmt = shard.read_manifest(split_dirs[0]).get('format')
  unknown = ('*', '<the stage that wrote them>.py', 'see its docstring')
  prefix, script, rewrite = WRITERS.get(fmt, unknown)
  bad = changed_shards(split_dirs)
  found = ('; '.join(bad) if bad else f'every shard in {root} matches the sha256 in its '
           'manifest.json (so it was corrupted before it was hashed): the next command finds it')
  return DataError(
      f'reading the shards in {root} failed ({type(error).__name__}: '
      f'{records.clean_message(error.message or str(error))}). {found}. To list every bad '
      'shard: python scripts/find_corrupted_tfrecords.py '
      f"--pattern='{root}/*/{prefix}.tfrecord-*'. To recover: delete the bad shards and rerun "
      f'python scripts/{script} --run_dir={run_dir} ({rewrite.format(run=run_dir)}), then '
      f'{then}.')
