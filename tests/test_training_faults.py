"""Faults V and M must survive on the debug preset: a corrupted shard (a clear error naming it, the
repair it suggests works), a learning rate changed on resume (used, not the checkpoint's), and a
checkpoint save killed halfway (its leftovers removed on the next start)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import DEBUG, REPO, copy_run, run_script, script_env
from wm import config as config_lib
from wm.infra import cli, runs
from wm.stages import seq, shard

LEARNING_RATE = 'optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE'  # in a V or M checkpoint


def latest_step(ckpt_dir: str) -> int | None:
  latest = tf.train.latest_checkpoint(ckpt_dir)  # what the `checkpoint` state file names
  return int(latest.rsplit('-', 1)[1]) if latest else None


def flip_middle_byte(path: str) -> None:
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0xFF]))


def shard_path(run_dir: str, stage: str, split: str, k: int = 0) -> str:
  split_dir = os.path.join(run_dir, runs.STAGE_DIRS[stage], split)
  return os.path.join(split_dir, shard.read_manifest(split_dir)['shards'][k]['file'])


def assert_names_the_shard(result: subprocess.CompletedProcess, path: str, rewriter: str) -> None:
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  error = result.stderr[result.stderr.index('error: '):]
  assert f'{path}: sha256 differs from the manifest' in error, error
  assert "find_corrupted_tfrecords.py --pattern='" in error, error
  assert f'delete the bad shards and rerun python scripts/{rewriter} --run_dir=' in error, error


def test_v_names_a_corrupted_raw_shard_and_its_repair_works(debug_encoded, tmp_path):
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  ckpt_dir = os.path.join(run_dir, 'vae', 'checkpoints')
  bad = shard_path(run_dir, 'shard', 'train', 1)
  flip_middle_byte(bad)
  result = run_script('train_vae', f'--run_dir={run_dir}', '--config.vae.train_steps=30',
                      check=False)
  assert_names_the_shard(result, bad, 'shard_rollouts.py')
  assert 'it continues from step 20' in result.stderr
  assert latest_step(ckpt_dir) == 20 and os.path.exists(os.path.join(ckpt_dir, 'ckpt-20.index'))

  # The repair the message gives: the shard stage writes the deleted shard again.
  os.remove(bad)
  run_script('shard_rollouts', f'--run_dir={run_dir}')
  assert run_script('find_corrupted_tfrecords', f"--pattern={run_dir}/records/*/raw.tfrecord-*",
                    config=None).stdout == ''
  result = run_script('train_vae', f'--run_dir={run_dir}', '--config.vae.train_steps=30')
  assert 'at step 20' in result.stderr and latest_step(ckpt_dir) == 30


def test_m_names_a_corrupted_encoded_shard_and_its_repair_works(debug_encoded, tmp_path):
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  ckpt_dir = os.path.join(run_dir, 'seq', 'checkpoints')
  train = shard_path(run_dir, 'encode', 'train')
  original = open(train, 'rb').read()
  flip_middle_byte(train)  # read before the first step
  result = run_script('train_sequence_model', f'--run_dir={run_dir}', check=False)
  assert_names_the_shard(result, train, 'encode_rollouts.py')
  assert latest_step(ckpt_dir) is None
  with open(train, 'wb') as f:
    f.write(original)

  valid = shard_path(run_dir, 'encode', 'valid')
  flip_middle_byte(valid)  # read at the first validation, step 10 (seq.valid_every)
  result = run_script('train_sequence_model', f'--run_dir={run_dir}', check=False)
  assert_names_the_shard(result, valid, 'encode_rollouts.py')
  assert 'it continues from step 10' in result.stderr  # the steps trained were saved
  assert latest_step(ckpt_dir) == 10

  os.remove(valid)
  run_script('encode_rollouts', f'--run_dir={run_dir}')
  result = run_script('train_sequence_model', f'--run_dir={run_dir}')
  assert 'ckpt-10 at step 10' in result.stderr and latest_step(ckpt_dir) == 20


def test_a_finished_stage_refused_once_tensorflow_loads_keeps_its_last_snapshot(debug_encoded,
                                                                                 tmp_path):
  # V's checkpoints refuse another z_size only once they are read, after the snapshot of the
  # refused command was written; the snapshot of the run that made V's outputs comes back.
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  folder = os.path.join(run_dir, 'vae', 'snapshot')
  before = {name: open(os.path.join(folder, name), 'rb').read() for name in os.listdir(folder)}
  result = run_script('train_vae', f'--run_dir={run_dir}', '--config.vae.z_size=16', check=False)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert 'use the vae.* config' in result.stderr, result.stderr[-3000:]
  assert 'its snapshot' in result.stderr and 'is put back' in result.stderr
  after = {name: open(os.path.join(folder, name), 'rb').read() for name in os.listdir(folder)}
  assert after == before
  assert sorted(os.listdir(os.path.join(run_dir, 'vae'))) == sorted(
      os.listdir(os.path.join(debug_encoded, 'vae')))  # no snapshot.previous/ left

  # A rerun that finishes keeps its own snapshot, and nothing set aside.
  result = run_script('train_vae', f'--run_dir={run_dir}', '--config.vae.train_steps=21')
  assert json.loads(open(os.path.join(folder, 'overrides.json')).read()) == {
      'vae.train_steps': '21'}
  assert not os.path.exists(folder + '.previous')


def test_m_resumes_with_the_configured_learning_rate(debug_world_model, tmp_path):
  run_dir = copy_run(debug_world_model, str(tmp_path / 'run'))
  ckpt_dir = os.path.join(run_dir, 'seq', 'checkpoints')
  assert latest_step(ckpt_dir) == 20
  before = tf.train.load_checkpoint(os.path.join(ckpt_dir, 'ckpt-20')).get_tensor(LEARNING_RATE)
  assert before == pytest.approx(1e-3, rel=1e-6)  # seq.learning_rate's default
  result = run_script('train_sequence_model', f'--run_dir={run_dir}',
                      '--config.seq.train_steps=25', '--config.seq.learning_rate=0.0123')
  assert 'ckpt-20 at step 20' in result.stderr
  after = tf.train.load_checkpoint(os.path.join(ckpt_dir, 'ckpt-25')).get_tensor(LEARNING_RATE)
  assert after == pytest.approx(0.0123, rel=1e-6)  # the variable the optimizer's 5 steps read
  assert 'seq.learning_rate=0.0123 replaces the learning rate 0.001' in result.stderr


def kill_during_a_checkpoint_write(argv: list[str], ckpt_dir: str, tries: int = 3) -> list[str]:
  """Runs `argv` (saving every step) and SIGKILLs it while a `ckpt-N_temp` folder exists, until
  one stays behind; returns the leftovers."""
  for _ in range(tries):
    process = subprocess.Popen(argv, env=script_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
      while process.poll() is None and time.time() < deadline:
        if any(name.endswith('_temp') for name in os.listdir(ckpt_dir)):
          process.send_signal(signal.SIGKILL)
          break
        time.sleep(0.001)
    finally:
      process.kill()
      process.wait()
    leftovers = [name for name in os.listdir(ckpt_dir) if name.endswith('_temp')]
    if leftovers:
      return leftovers
  raise AssertionError(f'no checkpoint write was caught in {tries} tries')


def test_v_removes_what_a_save_killed_halfway_left(debug_encoded, tmp_path):
  """A real SIGKILL while TensorFlow writes V's checkpoint: it leaves `ckpt-N_temp/part-00000-of-
  00001.data-00000-of-00001.tempstate<random>`, which nothing removed before."""
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  ckpt_dir = os.path.join(run_dir, 'vae', 'checkpoints')
  argv = [sys.executable, os.path.join(REPO, 'scripts', 'train_vae.py'), f'--run_dir={run_dir}',
          f'--config={DEBUG}', '--config.vae.train_steps=100000', '--config.vae.save_every=1']
  leftovers = kill_during_a_checkpoint_write(argv, ckpt_dir)
  complete = latest_step(ckpt_dir)
  assert complete >= 20 and f'ckpt-{complete}_temp' not in leftovers, (complete, leftovers)

  result = run_script('train_vae', f'--run_dir={run_dir}',
                      f'--config.vae.train_steps={complete + 2}')
  assert f'at step {complete}' in result.stderr  # resumed from the last complete checkpoint
  assert not [name for name in os.listdir(ckpt_dir) if 'temp' in name], os.listdir(ckpt_dir)
  assert latest_step(ckpt_dir) == complete + 2
  assert 'leftovers of an unfinished checkpoint save' in result.stderr


def test_m_removes_what_a_save_killed_halfway_left(debug_world_model, tmp_path, caplog):
  """The names a SIGKILL leaves (see the V test above, which makes them for real), made by hand:
  a temporary checkpoint folder and a temporary `checkpoint` state file."""
  run_dir = copy_run(debug_world_model, str(tmp_path / 'run'))
  ckpt_dir = os.path.join(run_dir, 'seq', 'checkpoints')
  temp = os.path.join(ckpt_dir, 'ckpt-30_temp')
  os.makedirs(temp)
  with open(os.path.join(temp, 'part-00000-of-00001.data-00000-of-00001.tempstate123'), 'wb'):
    pass
  with open(os.path.join(ckpt_dir, 'checkpoint.tmp' + 'ab' * 16), 'w') as f:
    f.write('model_checkpoint_path: "ckpt-30"\n')
  config = config_lib.load(DEBUG)
  config.seq.train_steps = 22
  with caplog.at_level(logging.INFO):
    seq.train(cli.Stage('seq', config, runs.Run(run_dir), {}))
  assert sorted(os.listdir(ckpt_dir)) == ['checkpoint', 'ckpt-10.data-00000-of-00001',
                                          'ckpt-10.index', 'ckpt-20.data-00000-of-00001',
                                          'ckpt-20.index', 'ckpt-22.data-00000-of-00001',
                                          'ckpt-22.index', 'model.json']
  assert 'ckpt-20 at step 20' in caplog.text and latest_step(ckpt_dir) == 22
