"""Stage 2: shards, manifests, the split, resuming after a kill, and corruption found."""

import glob
import os
import shutil

import numpy as np
import pytest

from conftest import copy_run, debug_config, run_script
from wm import config as config_lib, datasets, records, rollouts
from wm.errors import ConfigError
from wm.stages import shard


def test_manifests_account_for_every_rollout_and_frame(debug_data):
  seen, frames = [], 0
  for split in ('train', 'valid'):
    manifest = shard.read_manifest(os.path.join(debug_data, 'records', split))
    for entry in manifest['shards']:
      path = os.path.join(debug_data, 'records', split, entry['file'])
      assert os.path.getsize(path) == entry['bytes'] and shard.sha256(path) == entry['sha256']
      seen += entry['rollouts']
      frames += entry['frames']
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(
        debug_data, 'records', split, 'raw.tfrecord-*')))
    assert names == [shard.rollouts_shard_name(k, manifest['num_shards'])
                     for k in range(manifest['num_shards'])]
  assert sorted(seen) == rollouts.list_indices(os.path.join(debug_data, 'rollouts'))
  assert frames == sum(len(rollouts.load(p)['frames'])
                       for p in rollouts.list_paths(os.path.join(debug_data, 'rollouts')))


def test_split_is_stable_when_rollouts_are_added():
  before = {i: shard.split_of(0, i, 0.2) for i in range(100)}
  assert 5 < sum(s == 'valid' for s in before.values()) < 40
  assert before == {i: shard.split_of(0, i, 0.2) for i in range(100)}


def test_records_round_trip_the_rollouts(debug_data):
  split_dir = os.path.join(debug_data, 'records', 'train')
  for element in datasets.raw_rollouts(shard.shard_paths(split_dir)):
    index = int(element['index'])
    original = rollouts.load(rollouts.path_for(os.path.join(debug_data, 'rollouts'), index))
    for key in ('frames', 'actions', 'rewards', 'terminated', 'truncated'):
      np.testing.assert_array_equal(element[key].numpy(), original[key], err_msg=key)


def test_raw_frames_dataset_batches_samples(debug_data):
  paths = shard.shard_paths(os.path.join(debug_data, 'records', 'train'))
  batch = next(iter(datasets.raw_frames(paths, 5, 32, 8, seed=1)))
  assert batch.shape == (8, 64, 64, 3) and batch.dtype.name == 'uint8'


def test_rerun_after_a_kill_finishes_the_shards(debug_data, tmp_path):
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  train = os.path.join(run_dir, 'records', 'train')
  manifest = shard.read_manifest(train)
  # The state a SIGKILL can leave: a half-written temp file of a dead process, a shard renamed
  # into place before its metadata, a shard never started, no manifest, no DONE.
  victim, missing = manifest['shards'][0]['file'], manifest['shards'][1]['file']
  os.remove(os.path.join(train, '.meta', victim + '.json'))
  os.remove(os.path.join(train, missing))
  os.remove(os.path.join(train, '.meta', missing + '.json'))
  host = os.uname().nodename.split('.')[0]
  with open(os.path.join(train, f'.{missing}.tmp-{host}-999999'), 'wb') as f:
    f.write(b'partial')
  os.remove(os.path.join(train, 'manifest.json'))
  os.remove(os.path.join(run_dir, 'records', 'DONE'))
  with pytest.raises(Exception, match='manifest.json does not exist'):
    shard.read_manifest(train)
  run_script('shard_rollouts', f'--run_dir={run_dir}')
  assert shard.read_manifest(train) == manifest
  assert not [n for n in os.listdir(train) if '.tmp-' in n]
  assert os.path.exists(os.path.join(run_dir, 'records', 'DONE'))


def test_corrupted_input_rollout_is_named_and_nothing_else_lost(debug_data, tmp_path):
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  shutil.rmtree(os.path.join(run_dir, 'records'))
  bad = rollouts.path_for(os.path.join(run_dir, 'rollouts'), 3)
  data = open(bad, 'rb').read()
  open(bad, 'wb').write(data[:len(data) // 3])
  result = run_script('shard_rollouts', f'--run_dir={run_dir}', check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert f'rollout file {bad} is truncated or corrupted' in result.stderr
  assert 'Traceback' not in result.stderr
  # The other rollouts are untouched and their shards that were written are complete.
  assert len(rollouts.list_indices(os.path.join(run_dir, 'rollouts'))) == 6
  for path in glob.glob(os.path.join(run_dir, 'records', '*', 'raw.tfrecord-*')):
    assert records.check_file(path, records.parse_raw) is None


def test_find_corrupted_tfrecords_names_only_bad_shards(debug_data, tmp_path):
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  pattern = os.path.join(run_dir, 'records', '*', 'raw.tfrecord-*')
  good = run_script('find_corrupted_tfrecords', f'--pattern={pattern}', check=False, config=None)
  assert (good.returncode, good.stdout) == (0, '')
  shards = sorted(glob.glob(pattern))
  flipped, cut = shards[0], shards[-1]
  data = bytearray(open(flipped, 'rb').read())
  data[len(data) // 2] ^= 0x40
  open(flipped, 'wb').write(bytes(data))
  data = open(cut, 'rb').read()
  open(cut, 'wb').write(data[:-100])
  for name in glob.glob(os.path.join(run_dir, 'records', '*', 'manifest.json')):
    os.remove(name)  # the stream itself must reveal the damage, not only the manifest's checksum
  bad = run_script('find_corrupted_tfrecords', f'--pattern={pattern}', check=False, config=None)
  assert bad.returncode == 1
  reported = sorted(line.split(':')[0] for line in bad.stdout.splitlines())
  assert reported == sorted([flipped, cut]), bad.stdout


def test_snapshot_records_code_config_and_command(debug_data, tmp_path):
  snap = os.path.join(debug_data, 'records', 'snapshot')
  from wm.infra import snapshot
  code = snapshot.extract_code(snap, str(tmp_path / 'code'))
  assert os.path.exists(os.path.join(code, 'wm', 'stages', 'shard.py'))
  assert os.path.exists(os.path.join(code, 'configs', 'carracing.py'))
  config = config_lib.load_json(os.path.join(snap, 'config.json'))
  assert config == debug_config()
  assert 'shard_rollouts.py' in open(os.path.join(snap, 'command.txt')).read()
  assert 'tensorflow==' in open(os.path.join(snap, 'pip_freeze.txt')).read()
  assert 'revision:' in open(os.path.join(snap, 'git.txt')).read()
  run_dir = str(tmp_path / 'nosnap')
  run_script('collect_rollouts', f'--run_dir={run_dir}', '--nostore_snapshot',
             '--config.collect.num_rollouts=1', '--config.env.max_steps=5')
  assert not os.path.exists(os.path.join(run_dir, 'rollouts', 'snapshot'))


def test_full_shards_keep_their_rollouts_when_rollouts_are_added():
  sizes = {i: 40 + 7 * (i % 3) for i in range(30)}
  before = shard._cut(list(range(20)), sizes, target=100)
  after = shard._cut(list(range(30)), sizes, target=100)
  assert [len(g) for g in before[:-1]] == [3] * (len(before) - 1)  # each about 100 bytes
  assert after[:len(before) - 1] == before[:-1]  # the full shards, unchanged
  assert sum(after, []) == list(range(30))


def test_a_missing_run_to_reuse_shards_from_is_named(debug_data, tmp_path):
  config = debug_config()
  config.records.reuse_from = str(tmp_path / 'no_such_run')
  with pytest.raises(ConfigError, match='records.reuse_from=.*no_such_run.* is not a folder'):
    shard.shard(config, os.path.join(debug_data, 'rollouts'), str(tmp_path / 'records'))
  assert not os.path.exists(tmp_path / 'records')  # nothing written


def test_shards_are_written_at_the_configured_zlib_level_and_read_the_same(debug_data, tmp_path):
  source, sizes, read = os.path.join(debug_data, 'rollouts'), {}, {}
  for level in (0, 9):
    config = debug_config()
    config.records.compress_level = level
    config.records.shard_size_mb = 1000.0  # one shard a split
    out = str(tmp_path / f'level{level}')
    shard.shard(config, source, out, log=lambda message: None)
    paths = shard.shard_paths(os.path.join(out, 'train'))
    sizes[level] = sum(os.path.getsize(p) for p in paths)
    read[level] = [(int(x['index']), x['frames'].numpy().tobytes())
                   for x in datasets.raw_rollouts(paths)]
  assert sizes[0] > 2 * sizes[9], sizes  # level 0 stores, level 9 deflates
  assert read[0] == read[9] and read[0]
