"""Training windows cut from encoded rollouts: contents, padding, and no crossing of rollouts."""

import collections
import os

import numpy as np

import synthetic_encoded_data as synthetic
from wm import datasets, sequences
from wm.stages import shard


def paths(run_dir, split):
  return shard.shard_paths(os.path.join(run_dir, 'encoded', split))


def rollouts_by_index():
  # The fixture writes with seed 0; regenerate the same arrays in memory.
  rng = np.random.default_rng(0)
  a, b = synthetic.dynamics(rng)
  found, index = {}, 0
  for lengths in synthetic.LENGTHS.values():
    for steps in lengths:
      found[index] = synthetic.rollout(index, steps, rng, a, b)
      index += 1
  return found


def test_windows_never_cross_a_rollout(synthetic_encoded):
  truth = rollouts_by_index()
  length = 10
  data = sequences.train_batches(paths(synthetic_encoded, 'train'), length, batch_size=4,
                                 shuffle_buffer=16, seed=1)
  seen_padding = seen_short = 0
  for batch in data.take(30).as_numpy_iterator():
    for i in range(4):
      rollout = truth[int(batch['index'][i])]
      start, steps = int(batch['start'][i]), len(rollout['actions'])
      real = int(batch['mask'][i].sum())
      assert real == min(length, steps - start), (start, steps, batch['mask'][i])
      np.testing.assert_array_equal(batch['mask'][i][real:], 0)
      window = slice(start, start + real)
      np.testing.assert_allclose(batch['actions'][i][:real], rollout['actions'][window])
      np.testing.assert_allclose(batch['reward'][i][:real], rollout['rewards'][window])
      np.testing.assert_array_equal(batch['done'][i][:real], rollout['terminated'][window])
      # Latents are samples around this rollout's mu (std 0.05), targets shifted by one frame.
      assert np.abs(batch['z'][i][:real] - rollout['mu'][window]).max() < 0.05 * 6
      next_window = slice(start + 1, start + 1 + real)
      assert np.abs(batch['z_next'][i][:real] - rollout['mu'][next_window]).max() < 0.05 * 6
      np.testing.assert_array_equal(batch['z'][i][1:real], batch['z_next'][i][:real - 1])
      for key in ('z', 'z_next', 'actions', 'reward', 'done'):
        assert not np.any(batch[key][i][real:]), (key, 'padding must be zeros')
      seen_padding += real < length
      seen_short += steps < length
  assert seen_padding and seen_short


def test_windows_from_the_episode_start_begin_at_multiples_of_the_length(synthetic_encoded):
  # seq.window_start=episode: every rollout is read from its first step, with no random offset.
  truth = rollouts_by_index()
  length = 10
  data = sequences.train_batches(paths(synthetic_encoded, 'train'), length, batch_size=4,
                                 shuffle_buffer=16, seed=1, from_start=True)
  starts = set()
  for batch in data.take(30).as_numpy_iterator():
    for i in range(4):
      start = int(batch['start'][i])
      assert start % length == 0, start
      rollout = truth[int(batch['index'][i])]
      real = int(batch['mask'][i].sum())
      np.testing.assert_allclose(batch['actions'][i][:real],
                                 rollout['actions'][start:start + real])
      starts.add(start)
  assert 0 in starts and len(starts) > 1


def test_bucketed_batches_are_cut_to_their_windows_bucket(synthetic_encoded):
  # seq.bucket_steps: whole episodes as one 40-step window each (lengths 6 to 40), in 10-step
  # buckets: a batch's windows all end in its last 10 steps, and no real step is cut off.
  truth = rollouts_by_index()
  length, bucket = 40, 10
  data = sequences.train_batches(paths(synthetic_encoded, 'train'), length, batch_size=2,
                                 shuffle_buffer=16, seed=1, from_start=True, bucket_steps=bucket)
  widths = set()
  for batch in data.take(40).as_numpy_iterator():
    width = batch['mask'].shape[1]
    assert width % bucket == 0 and width <= length, width
    for key in sequences.TIMED:
      assert batch[key].shape[:2] == (2, width), (key, batch[key].shape)
    for i in range(2):
      rollout = truth[int(batch['index'][i])]
      real = int(batch['mask'][i].sum())
      assert real == len(rollout['actions']), (real, len(rollout['actions']))
      assert width - bucket < real <= width, (real, width)
      np.testing.assert_allclose(batch['actions'][i][:real], rollout['actions'][:real])
    widths.add(width)
  assert widths == {10, 20, 30, 40}, widths


def test_packed_rows_hold_whole_windows_end_to_end(synthetic_encoded):
  # seq.pack: whole episodes (6 to 40 steps) laid end to end in 40-step rows, each window's first
  # step marked by `reset`, its steps those of one rollout from its start, the padding after them.
  truth = rollouts_by_index()
  by_actions = {tuple(np.round(r['actions'][0], 5)): r for r in truth.values()}
  length = 40
  data = sequences.train_batches(paths(synthetic_encoded, 'train'), length, batch_size=2,
                                 shuffle_buffer=16, seed=1, from_start=True, pack=True)
  windows = real_steps = slots = 0
  for batch in data.take(40).as_numpy_iterator():
    for key in sequences.TIMED:
      assert batch[key].shape[:2] == (2, length), (key, batch[key].shape)
    for i in range(2):
      mask, reset = batch['mask'][i], batch['reset'][i]
      used = int(mask.sum())
      np.testing.assert_array_equal(mask, np.arange(length) < used)  # no gap between windows
      starts = list(np.flatnonzero(reset)) + [used]
      assert starts[0] == 0 and len(starts) > 1, reset
      for start, end in zip(starts, starts[1:]):
        rollout = by_actions[tuple(np.round(batch['actions'][i][start], 5))]
        assert end - start == len(rollout['actions']), (start, end)
        np.testing.assert_allclose(batch['actions'][i][start:end], rollout['actions'])
        np.testing.assert_array_equal(batch['done'][i][start:end], rollout['terminated'])
        windows += 1
      for key in ('z', 'actions', 'reward', 'done', 'reset'):
        assert not np.any(batch[key][i][used:]), (key, 'padding must be zeros')
      real_steps, slots = real_steps + used, slots + length
  assert windows > 80 * 1.2, windows  # 80 rows: many hold two windows or more
  lengths = [len(r['actions']) for r in truth.values()]
  # One window a row would fill mean(lengths) / length (0.68 here); packed rows filled 0.88-0.90,
  # by the shuffle's order (0.877 seen once): the margin tells packing from padding, not luck.
  assert real_steps / slots > np.mean(lengths) / length + 0.15, (real_steps / slots, lengths)


def resample(run_dir, seed):
  """How many times the resample of `seed` reads each training rollout, by index."""
  rollouts = datasets.encoded_rollouts(paths(run_dir, 'train'))
  return collections.Counter(
      int(r['index']) for r in sequences.resampled(rollouts, seed).as_numpy_iterator())


def test_a_bootstrap_resample_is_fixed_by_its_seed_and_leaves_some_rollouts_out(synthetic_encoded):
  # seq.judge_data=bootstrap: each rollout read a Poisson(1) number of times, the same on every
  # read for one seed (a judge's data must not change when it resumes), another for another.
  train = set(range(len(synthetic.LENGTHS['train'])))
  draws = [resample(synthetic_encoded, seed) for seed in range(1, 41)]
  assert resample(synthetic_encoded, 1) == draws[0]
  assert len({tuple(sorted(d.items())) for d in draws}) > 30
  for counts in draws:
    assert set(counts) <= train, counts
  assert any(set(d) < train for d in draws) and any(max(d.values()) > 1 for d in draws)
  sizes = [sum(d.values()) for d in draws]
  assert 8 < np.mean(sizes) < 12, sizes  # as many rollouts as the data on average
  left_out = np.mean([len(train - set(d)) / len(train) for d in draws])
  assert 0.25 < left_out < 0.5, left_out  # e^-1 = 0.37 of them


def test_training_windows_come_only_from_the_resample(synthetic_encoded):
  counts = resample(synthetic_encoded, 3)
  assert len(counts) < len(synthetic.LENGTHS['train']), counts  # some rollouts left out
  data = sequences.train_batches(paths(synthetic_encoded, 'train'), 10, batch_size=4,
                                 shuffle_buffer=16, seed=1, from_start=True, resample_seed=3)
  seen = collections.Counter()
  for batch in data.take(60).as_numpy_iterator():
    seen.update(int(i) for i, start in zip(batch['index'], batch['start']) if start == 0)
  assert set(seen) == set(counts), (seen, counts)


def test_validation_windows_are_fixed_and_cover_every_step(synthetic_encoded):
  truth = rollouts_by_index()
  data = sequences.valid_batches(paths(synthetic_encoded, 'valid'), 10, batch_size=3, seed=5)
  first, second = list(data.as_numpy_iterator()), list(data.as_numpy_iterator())
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a['z'], b['z'])
  mask = np.concatenate([b['mask'] for b in first])
  index = np.concatenate([b['index'] for b in first])
  for i in set(index.tolist()):
    assert mask[index == i].sum() == len(truth[i]['actions'])


def test_first_latents_are_every_rollouts_first_frame(synthetic_encoded):
  truth = rollouts_by_index()
  first = sequences.first_latents(paths(synthetic_encoded, 'train'))
  assert sorted(first['index'].tolist()) == list(range(len(synthetic.LENGTHS['train'])))
  for row, i in enumerate(first['index']):
    np.testing.assert_array_equal(first['mu'][row], truth[int(i)]['mu'][0])
  assert first['logvar'].shape == first['mu'].shape == (10, synthetic.Z_SIZE)
