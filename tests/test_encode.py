"""Stage 4: re-encoding splits across processes into one folder, resumable, and refusing an
encoder that does not fit the data."""

import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEBUG, REPO, copy_run, run_script, script_env
from wm import datasets
from wm.infra import fileio
from wm.stages import encode, shard
from wm.errors import ConfigError
from wm.models import export
from wm.models.vae import ConvVAE


def fake_manifest(shard_sizes: list[int]) -> dict:
  shards, index = [], 0
  for k, size in enumerate(shard_sizes):
    shards.append({'file': f'raw.tfrecord-{k:05d}-of-{len(shard_sizes):05d}',
                   'rollouts': list(range(index, index + size))})
    index += size
  return {'shards': shards}


@pytest.mark.parametrize('sizes,outer,sub', [([3, 2, 4], 2, 3), ([1, 1], 3, 2), ([5], 1, 1)])
def test_plan_covers_every_rollout_once(sizes, outer, sub):
  outputs = encode.plan(fake_manifest(sizes), outer, sub)
  assert len(outputs) == outer * sub
  assert [o.name for o in outputs] == [f'encoded.tfrecord-{k:05d}-of-{outer * sub:05d}'
                                       for k in range(outer * sub)]
  assert sorted(i for o in outputs for i in o.rollouts) == list(range(sum(sizes)))
  for o in outputs:  # the reads of an output yield exactly its rollouts, in order
    read = []
    for name, first, count in o.reads:
      k = int(name.split('-')[1])
      read += fake_manifest(sizes)['shards'][k]['rollouts'][first:first + count]
    assert read == o.rollouts


def encode_argv(run_dir: str, *args: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, 'scripts', 'encode_rollouts.py'),
          f'--run_dir={run_dir}', f'--config={DEBUG}', *args]


def read_split(split_dir: str) -> dict[int, dict]:
  paths = shard.shard_paths(split_dir)
  return {int(x['index']): {k: v.numpy() for k, v in x.items()}
          for x in datasets.encoded_rollouts(paths)}


def test_two_processes_write_every_output_once(debug_encoded, tmp_path):
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  reference = {s: read_split(os.path.join(run_dir, 'encoded', s)) for s in ('train', 'valid')}
  shutil.rmtree(os.path.join(run_dir, 'encoded'))
  processes = [subprocess.Popen(encode_argv(run_dir, '--num_outer_shards=2',
                                            f'--outer_shard_index={i}', '--num_sub_shards=2'),
                                env=script_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  for p in processes:
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]
  assert os.path.exists(os.path.join(run_dir, 'encoded', 'DONE'))
  for split in ('train', 'valid'):
    out_dir = os.path.join(run_dir, 'encoded', split)
    names = sorted(n for n in os.listdir(out_dir) if n.startswith('encoded.'))
    assert names == [f'encoded.tfrecord-{k:05d}-of-00004' for k in range(4)]
    manifest = shard.read_manifest(out_dir)
    raw = shard.read_manifest(os.path.join(run_dir, 'records', split))
    assert manifest['format'] == 'encoded-rollouts-v1'
    assert (manifest['z_size'], manifest['action_size']) == (8, 3)
    assert datasets.encoded_sizes(out_dir) == (8, 3)
    assert manifest['num_shards'] == 4
    assert (manifest['num_rollouts'], manifest['num_frames']) == (raw['num_rollouts'],
                                                                  raw['num_frames'])
    got = read_split(out_dir)
    assert sorted(got) == sorted(i for s in raw['shards'] for i in s['rollouts'])
    for index, x in got.items():  # the same latents as the one-process encoding
      assert x['mu'].shape == (x['steps'] + 1, 8) and x['actions'].shape == (x['steps'], 3)
      np.testing.assert_allclose(x['mu'], reference[split][index]['mu'], atol=1e-5)
      np.testing.assert_array_equal(x['actions'], reference[split][index]['actions'])

  # A rerun skips complete outputs (here in-process: the same code the script runs).
  encoder = encode.Encoder(os.path.join(run_dir, 'vae', 'export'), 64)
  in_dir, out_dir = (os.path.join(run_dir, d, 'train') for d in ('records', 'encoded'))
  data = encode.probe(in_dir, shard.shard_paths(in_dir))
  outputs = encode.plan(shard.read_manifest(in_dir), 2, 2)
  before = {n: os.stat(os.path.join(out_dir, n)).st_mtime_ns
            for n in os.listdir(out_dir) if n.startswith('enc')}
  manifest = encode.encode_split(encoder, in_dir, out_dir, outputs, outputs[:2], data)
  assert manifest == shard.read_manifest(out_dir)
  after = {n: os.stat(os.path.join(out_dir, n)).st_mtime_ns for n in before}
  assert before == after


def test_mismatched_encoder_is_refused_before_writing(debug_encoded, tmp_path):
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  shutil.rmtree(os.path.join(run_dir, 'encoded'))
  trained = export.load(os.path.join(run_dir, 'vae', 'export'), kind='encoder')
  data = {'frame_shape': (64, 64, 3), 'action_size': 3}
  encode.check_encoder(trained, 'export', data, 'records/train', 8)  # fits
  with pytest.raises(ConfigError, match='latent size 8 but the config says vae.z_size=4'):
    encode.check_encoder(trained, 'export', data, 'records/train', 4)

  other = ConvVAE(z_size=8, frame_size=32)
  other.build_for_loading()
  other_dir = str(tmp_path / 'encoder32')
  export.save(other, other_dir, kind='encoder', name='conv_vae', kwargs=other.get_config())
  result = run_script('encode_rollouts', f'--run_dir={run_dir}', f'--encoder_dir={other_dir}',
                      check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'takes frames (32, 32, 3)' in result.stderr and '(64, 64, 3)' in result.stderr
  assert not os.path.exists(os.path.join(run_dir, 'encoded', 'train'))


def test_a_corrupted_raw_shard_is_named_not_a_traceback(debug_encoded, tmp_path):
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  shutil.rmtree(os.path.join(run_dir, 'encoded'))
  bad = sorted(glob.glob(os.path.join(run_dir, 'records', 'train', 'raw.tfrecord-*')))[0]
  with open(bad, 'r+b') as f:  # one flipped byte in the middle of the GZIP stream
    f.seek(os.path.getsize(bad) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  result = run_script('encode_rollouts', f'--run_dir={run_dir}', check=False, config=None)
  assert result.returncode == 2, result.stderr[-3000:]
  assert os.path.basename(bad) in result.stderr
  assert 'find_corrupted_tfrecords.py' in result.stderr and 'shard_rollouts.py' in result.stderr
  assert 'Traceback' not in result.stderr


def encoded_meta(run_dir: str, split: str) -> list[dict]:
  return [fileio.read_json(os.path.join(run_dir, 'encoded', split, shard.META, n))
          for n in sorted(os.listdir(os.path.join(run_dir, 'encoded', split, shard.META)))]


def test_rollouts_the_same_encoder_encoded_are_copied_from_reuse_from(debug_encoded, tmp_path):
  """records.reuse_from (an iterate round with vae_steps=0): a rollout whose raw shard the donor
  holds byte for byte, encoded there by the same encoder, is copied, not encoded; one of a shard
  with other bytes, or of a split another encoder wrote, is encoded anew. A corrupted donor file
  is named, with the way around it."""
  donor = copy_run(debug_encoded, str(tmp_path / 'donor'))
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  shutil.rmtree(os.path.join(run_dir, 'encoded'))
  raw_path = os.path.join(donor, 'records', 'train', shard.MANIFEST)
  raw = fileio.read_json(raw_path)
  other = raw['shards'][0]['rollouts']  # the donor's shard "holds other bytes"
  raw['shards'][0]['sha256'] = '0' * 64
  fileio.write_json(raw_path, raw)
  encoded_path = os.path.join(donor, 'encoded', 'valid', shard.MANIFEST)
  fileio.write_json(encoded_path, dict(fileio.read_json(encoded_path), encoder='another V'))

  result = run_script('encode_rollouts', f'--run_dir={run_dir}',
                      f'--config.records.reuse_from={donor}')
  assert os.path.exists(os.path.join(run_dir, 'encoded', 'DONE')), result.stderr[-3000:]
  train = encoded_meta(run_dir, 'train')
  assert sum(m['reused'] for m in train) == sum(m['num_rollouts'] for m in train) - len(other)
  assert sum(m['reused'] for m in encoded_meta(run_dir, 'valid')) == 0
  for split in ('train', 'valid'):
    mine = read_split(os.path.join(run_dir, 'encoded', split))
    theirs = read_split(os.path.join(donor, 'encoded', split))
    assert sorted(mine) == sorted(theirs)
    for index, x in mine.items():
      np.testing.assert_allclose(x['mu'], theirs[index]['mu'], atol=1e-5)
      np.testing.assert_array_equal(x['actions'], theirs[index]['actions'])
    assert shard.read_manifest(os.path.join(run_dir, 'encoded', split))['num_frames'] == (
        shard.read_manifest(os.path.join(run_dir, 'records', split))['num_frames'])

  shutil.rmtree(os.path.join(run_dir, 'encoded'))
  bad = glob.glob(os.path.join(donor, 'encoded', 'train', 'encoded.tfrecord-*'))[0]
  with open(bad, 'r+b') as f:
    f.truncate(os.path.getsize(bad) // 2)
  result = run_script('encode_rollouts', f'--run_dir={run_dir}',
                      f'--config.records.reuse_from={donor}', check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert bad in result.stderr and '--config.records.reuse_from=' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not glob.glob(os.path.join(run_dir, 'encoded', 'train', 'encoded.tfrecord-*'))
