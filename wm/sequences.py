"""Training sequences for M, cut from encoded rollouts (RUN/encoded/{train,valid}).

Each time a rollout is read, one latent per frame is sampled from that frame's N(mu, exp(logvar/2))
(as the paper did: M learns from the encoder's uncertainty, not only its means). The rollout
(T steps, T+1 frames) is then cut into windows of `length` steps starting at o, o+L, o+2L, ...

    z       [L, Z]  sampled latents of frames t .. t+L-1      (inputs)
    actions [L, A]  actions taken at those frames             (inputs)
    z_next  [L, Z]  sampled latents of frames t+1 .. t+L      (targets; same draws as z)
    reward  [L]     rewards of those steps                     (targets)
    done    [L]     terminated at those steps                  (targets; see wm/models/mdn.py)
    mask    [L]     1 on real steps, 0 on padding
    index, start    the rollout's index and t (for checks and debugging)

A window never crosses into another rollout: the last window of a rollout (and the only window of
a rollout shorter than L) is padded with zeros and masked, not filled from the next rollout. Short
rollouts are kept rather than dropped because the episodes that end early (the car leaves the
track) are the ones that teach the done head. Training draws a random offset o < L each pass (the
first o steps are covered on other passes) and fresh latent samples; validation uses o = 0 and
latent samples seeded by the rollout index, so its NLL is comparable across evaluations.
With seq.window_start=episode training uses o = 0 too: M then learns every window from an
episode's first step with a fresh state, as a dream episode runs, and with a sequence_length
longer than most episodes it learns what a whole episode's memory holds (Doom's health is not
on screen: when a hit kills depends on the hits before it).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from wm import datasets
from wm.distribute import InputShard

AUTOTUNE = tf.data.AUTOTUNE
FORMAT = datasets.ENCODED_FORMAT


def windows(rollout: dict[str, tf.Tensor], length: int, offset: tf.Tensor,
            noise: tf.Tensor) -> dict[str, tf.Tensor]:
  """Cuts one parsed encoded rollout into [N, length, ...] windows (see the module docstring).

  `noise` [T+1, Z] is the standard normal draw that turns (mu, logvar) into latents.
  """
  steps = tf.shape(rollout['actions'])[0]
  offset = tf.minimum(offset, tf.maximum(steps - 1, 0))
  count = (steps - offset + length - 1) // length
  span = count * length
  z = rollout['mu'] + tf.exp(0.5 * rollout['logvar']) * noise

  def cut(x, shift=0):
    x = x[offset + shift:offset + shift + span]
    pad = [[0, span - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
    x = tf.pad(x, pad)
    return tf.reshape(x, tf.concat([[count, length], tf.shape(x)[1:]], 0))

  starts = offset + tf.range(count) * length
  return {
      'z': cut(z[:-1]), 'actions': cut(rollout['actions']), 'z_next': cut(z, 1),
      'reward': cut(rollout['rewards']), 'done': cut(tf.cast(rollout['terminated'], tf.float32)),
      'mask': cut(tf.ones([steps], tf.float32)),
      'index': tf.fill([count], rollout['index']), 'start': starts,
  }


def train_batches(paths: list[str], length: int, batch_size: int, shuffle_buffer: int = 1000,
                  seed: int = 0, shard: InputShard | None = None,
                  from_start: bool = False, start_step: int = 0,
                  bucket_steps: int = 0, resample_seed: int | None = None,
                  pack: bool = False) -> tf.data.Dataset:
  """Endless shuffled batches of windows with random offsets (or, `from_start`, windows at
  t = 0, L, 2L, ...: every window chain starts where an episode does) and fresh latent samples,
  from all the rollouts or from `shard`'s part of them. The stream is a function of (seed,
  start_step): the rollouts' order is seeded and each one's offset and latent sample are drawn
  from its position in the stream, so a training run is the same on every rerun, and one
  resumed at `start_step` draws windows of its own rather than repeat the first ones.

  With `bucket_steps` (seq.bucket_steps) a batch holds windows whose real steps end in the same
  bucket_steps-long span of the window ((n - 1) // bucket_steps for n real steps), cut to that
  span's end: [batch_size, k * bucket_steps] with k <= length / bucket_steps, every real step
  kept and most of the padding gone. A batch then has as many windows as ever and fewer steps:
  M's training weighs its gradient by that fill (wm/stages/seq.py Trainer), so that a short
  window's steps do not count more than a long one's.

  With `pack` (seq.pack) a batch is `batch_size` rows of `length` steps, each row windows laid
  end to end (`packed`): most of the padding gone, and every batch a mix of lengths, as padded
  ones are.

  With `resample_seed` the rollouts are a bootstrap resample of them (see `resampled`)."""
  stream = datasets.stream_seed(seed, start_step)

  def cut(position, rollout):
    draw = tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(stream, tf.int64), position]), 1)
    if from_start:
      offset = tf.constant(0)
    else:
      offset = tf.random.stateless_uniform([], draw, 0, length, tf.int32)
    noise = tf.random.stateless_normal(tf.shape(rollout['mu']),
                                       tf.random.experimental.stateless_fold_in(draw, 2))
    return windows(rollout, length, offset, noise)

  data = datasets.encoded_rollouts(paths, shuffle=True, seed=stream, shard=shard)
  if resample_seed is not None:
    data = resampled(data, resample_seed)
  data = data.repeat().enumerate()
  data = data.map(cut, num_parallel_calls=AUTOTUNE).unbatch()
  data = data.shuffle(shuffle_buffer, seed=stream, reshuffle_each_iteration=True)
  if bucket_steps:
    return bucketed(data, length, batch_size, bucket_steps).prefetch(AUTOTUNE)
  if pack:
    z_size, action_size = datasets.encoded_sizes(os.path.dirname(paths[0]))
    data = packed(data, length, {'z': z_size, 'actions': action_size, 'z_next': z_size})
  return data.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def resampled(rollouts: tf.data.Dataset, seed: int) -> tf.data.Dataset:
  """Each rollout as many times as a Poisson(1) draw seeded by (seed, its index) says: a
  bootstrap resample of the rollouts (the Poisson bootstrap: about 37% left out, the others once
  or more, as many as the data in all on average), the same on every pass, rerun and shard."""

  def copies(rollout):
    draw = tf.stack([tf.constant(seed, tf.int64), rollout['index']])
    count = tf.random.stateless_poisson([], draw, 1.0, dtype=tf.int64)
    return tf.data.Dataset.from_tensors(rollout).repeat(count)

  return rollouts.flat_map(copies)


def bucketed(windows_data: tf.data.Dataset, length: int, batch_size: int,
             bucket_steps: int) -> tf.data.Dataset:
  """Batches of windows whose real steps end in the same bucket, cut to its end (see
  train_batches). The order is the stream's: a bucket's batch is emitted once it is full."""

  def bucket(window):
    return bucket_of(tf.reduce_sum(tf.cast(window['mask'] > 0, tf.int64)), bucket_steps)

  def cut(key, batch):
    end = bucket_end(key, bucket_steps, length)
    return {name: value[:, :end] if name in TIMED else value for name, value in batch.items()}

  return windows_data.group_by_window(
      key_func=bucket, window_size=batch_size,
      reduce_func=lambda key, group: group.batch(batch_size, drop_remainder=True).map(
          lambda batch: cut(key, batch)))


OPEN_ROWS = 8  # rows a window may join in `packed`: Doom's windows fill 91% of them (4: 88%)


def packed(windows_data: tf.data.Dataset, length: int, sizes: dict[str, int],
           open_rows: int = OPEN_ROWS) -> tf.data.Dataset:
  """Rows of `length` steps, each holding the real steps of one or more windows end to end, with
  `reset` [length] 1 at each window's first step (M starts each window from its initial state
  there and learns nothing across the seam: wm/models/fused_lstm.py) and the rest of the row
  padding (mask 0). A window joins the first of `open_rows` rows it fits in; when none has room
  the oldest row is emitted and the window opens a new one. The order is the stream's, so the
  rows are the same on every rerun. `sizes`: the last axis of the fields that have one beyond
  time (z, actions, z_next)."""
  widths = [sizes.get(name, 1) for name in TIMED]
  columns = sum(widths) + 1  # + reset

  def flat(window):
    parts = [tf.reshape(tf.cast(window[name], tf.float32), [length, width])
             for name, width in zip(TIMED, widths)]
    reset = tf.one_hot(0, length)[:, None]
    return tf.concat(parts + [reset], -1), tf.cast(tf.reduce_sum(window['mask']), tf.int32)

  def place(state, item):
    rows, used = state
    window, steps = item
    fits = used + steps <= length
    if_fits = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    def join():  # into the first row with room: the rolled window's padding is zeros
      moved = tf.roll(window, used[if_fits], axis=0)
      return (tf.tensor_scatter_nd_add(rows, [[if_fits]], moved[None]),
              tf.tensor_scatter_nd_add(used, [[if_fits]], [steps]), tf.zeros_like(rows[0]),
              tf.constant(False))

    def emit():  # the oldest row goes; the window opens the newest
      return (tf.concat([rows[1:], window[None]], 0), tf.concat([used[1:], [steps]], 0),
              rows[0], tf.constant(True))

    rows, used, row, done = tf.cond(tf.reduce_any(fits), join, emit)
    return (rows, used), (row, done)

  start = (tf.zeros([open_rows, length, columns]), tf.zeros([open_rows], tf.int32))
  rows = windows_data.map(flat).scan(start, place).filter(lambda row, done: done)

  def unflat(row, done):
    del done
    parts = tf.split(row, widths + [1], axis=-1)
    out = {name: part if name in sizes else part[:, 0] for name, part in zip(TIMED, parts)}
    out['reset'] = parts[-1][:, 0]
    return out

  return rows.map(unflat)


def bucket_of(steps, bucket_steps: int):
  """The bucket of a window with `steps` (>= 1) real steps: a tensor or an array of them."""
  return (steps - 1) // bucket_steps


def bucket_end(key, bucket_steps: int, length: int) -> tf.Tensor:
  """Where a batch of bucket `key` is cut: the bucket's last step, or the window's end."""
  return tf.minimum((key + 1) * bucket_steps, length)


TIMED = ('z', 'actions', 'z_next', 'reward', 'done', 'mask')  # the window fields with a time axis


def valid_batches(paths: list[str], length: int, batch_size: int, seed: int = 0) -> tf.data.Dataset:
  """The same windows every time: offset 0, latent samples seeded by (seed, rollout index)."""

  def cut(rollout):
    noise_seed = tf.stack([tf.constant(seed, tf.int64), rollout['index']])
    noise = tf.random.stateless_normal(tf.shape(rollout['mu']), noise_seed)
    return windows(rollout, length, tf.constant(0), noise)

  data = datasets.encoded_rollouts(paths).map(cut).unbatch()
  return data.batch(batch_size).prefetch(AUTOTUNE)


def first_latents(paths: list[str]) -> dict[str, np.ndarray]:
  """mu and logvar [N, Z] of every rollout's first frame, and their rollout indices [N]."""
  data = datasets.encoded_rollouts(paths).map(
      lambda r: {'mu': r['mu'][0], 'logvar': r['logvar'][0], 'index': r['index']})
  rows = list(data.as_numpy_iterator())
  return {key: np.stack([row[key] for row in rows]) for key in ('mu', 'logvar', 'index')}


def random_batch(batch_size: int, length: int, z_size: int, action_size: int,
                 seed: int = 0) -> dict[str, tf.Tensor]:
  """A training batch of random numbers with train_batches' fields M trains on (a done at 1% of
  the steps, no padding): what the benchmarks time M's training step on."""
  rng = np.random.default_rng(seed)
  b, t = batch_size, length
  arrays = {'z': rng.normal(size=(b, t, z_size)),
            'actions': rng.uniform(-1, 1, (b, t, action_size)),
            'z_next': rng.normal(size=(b, t, z_size)), 'reward': rng.normal(size=(b, t)),
            'done': rng.uniform(size=(b, t)) < 0.01, 'mask': np.ones((b, t))}
  return {key: tf.constant(value, tf.float32) for key, value in arrays.items()}
