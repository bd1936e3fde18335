"""V and M under tf.distribute: the same steps at every world size, chief-only writes, a killed
worker and a preemption signal, the data split between workers, and the bad inputs.

Several devices are two logical CPU devices of one process (MirroredStrategy), several workers
are real processes on localhost joined by TF_CONFIG (MultiWorkerMirroredStrategy); the srun
path is tests/test_slurm.py's. A strategy is set up before any other TensorFlow op, so each
runs in a process of its own.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, copy_run, run_script, script_env

from wm import config as config_lib, datasets, distribute, hardware
from wm.errors import ConfigError, DataError
from wm.infra import changes, cpu_kernels, runs
from wm.stages import shard


def start_workers(argv: list[str], tmp_path, name: str, count: int = 2) -> list[subprocess.Popen]:
  """`count` processes of `argv` joined by TF_CONFIG; each one's output in tmp_path/name-i.log."""
  procs = []
  for i, tf_config in enumerate(distribute.localhost_tf_configs(count)):
    log = open(tmp_path / f'{name}-{i}.log', 'w')  # pylint: disable=consider-using-with
    env = dict(script_env(), TF_CONFIG=tf_config, TMPDIR=str(tmp_path / 'tmp'))
    procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO))
  return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
  deadline = time.time() + timeout
  codes = []
  for proc in procs:
    try:
      codes.append(proc.wait(max(1.0, deadline - time.time())))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  return codes


def log_of(tmp_path, name: str, index: int) -> str:
  return (tmp_path / f'{name}-{index}.log').read_text()


def stage_argv(script: str, run_dir: str, *args: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, 'scripts', script + '.py'), f'--run_dir={run_dir}',
          *args]


# ---------------------------------------------------------------------------- the same steps


def test_every_world_size_takes_the_same_steps_on_the_same_global_batches(tmp_path):
  """V and M (with gradient clipping that binds, and M with each batch weighted by its fill as
  with seq.bucket_steps) on one device, on two mirrored CPU devices, and on two workers: the
  losses of 4 steps agree to float tolerance."""
  harness = os.path.join(REPO, 'tests', 'distributed_steps.py')
  (tmp_path / 'tmp').mkdir()
  out = {kind: str(tmp_path / f'{kind}.json') for kind in ('one_device', 'mirrored',
                                                            'multi_worker')}
  single = subprocess.Popen([sys.executable, harness, 'one_device', out['one_device']],
                            env=script_env(), cwd=REPO)
  mirrored = subprocess.Popen([sys.executable, harness, 'mirrored', out['mirrored'], '2'],
                              env=script_env(), cwd=REPO)
  workers = start_workers([sys.executable, harness, 'multi_worker', out['multi_worker']],
                          tmp_path, 'steps')
  assert wait_all([single, mirrored, *workers]) == [0, 0, 0, 0], log_of(tmp_path, 'steps', 0)
  results = {kind: json.load(open(path)) for kind, path in out.items()}
  assert [(r['replicas'], r['workers']) for r in results.values()] == [(1, 1), (2, 1), (2, 2)]
  for model in ('vae', 'seq', 'seq_weighted'):
    reference = results['one_device'][model]
    assert len(set(np.round(reference, 3))) == len(reference), reference  # training moves it
    for kind in ('mirrored', 'multi_worker'):
      np.testing.assert_allclose(results[kind][model], reference, rtol=2e-5,
                                 err_msg=f'{model} under {kind}')


# ---------------------------------------------------------------------------- whole stages


def test_two_workers_train_v_write_once_and_resume_after_one_is_killed(debug_data, tmp_path):
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  (tmp_path / 'tmp').mkdir()
  ckpt = os.path.join(run_dir, 'vae', 'checkpoints')
  argv = stage_argv('train_vae', run_dir, '--config.vae.train_steps=2000',
                    '--config.distribute.strategy=multi_worker', '--config.distribute.workers=2')
  procs = start_workers(argv, tmp_path, 'first')
  deadline = time.time() + 180
  while not os.path.exists(os.path.join(ckpt, 'ckpt-20.index')) and time.time() < deadline:
    assert all(p.poll() is None for p in procs), log_of(tmp_path, 'first', 0)[-3000:]
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGKILL)
  started = time.time()
  assert procs[0].wait(120) == 2, log_of(tmp_path, 'first', 0)[-3000:]
  lost = log_of(tmp_path, 'first', 0)
  assert 'error: worker 0 of 2 stopped because another worker is gone' in lost, lost[-2000:]
  assert 'Traceback' not in lost
  print(f'the chief noticed the lost worker in {time.time() - started:.1f} s')
  # What worker 1 leaves when the kill lands in the middle of its part of a save (it may or may
  # not have, depending on timing): its next save must remove it.
  stale = tmp_path / 'tmp' / distribute.part_folder_name(1, ckpt)
  stale.mkdir(exist_ok=True)
  (stale / 'ckpt.data-00000-of-00001.tempstate123').write_bytes(b'half')

  again = start_workers(argv[:-3] + ['--config.vae.train_steps=40'] + argv[-2:], tmp_path,
                        'again')
  assert wait_all(again) == [0, 0], log_of(tmp_path, 'again', 0)[-3000:]
  for i in range(2):
    assert 'resumed from' in log_of(tmp_path, 'again', i), log_of(tmp_path, 'again', i)[-2000:]
  done = json.load(open(os.path.join(run_dir, 'vae', 'DONE')))
  assert done['step'] == 40 and (done['device']['workers'], done['device']['replicas']) == (2, 2)
  # Only the chief wrote: one TensorBoard file per run, no worker's checkpoint part left over.
  assert len(glob.glob(os.path.join(run_dir, 'vae', 'tb', 'events.*'))) == 2  # two runs
  assert glob.glob(str(tmp_path / 'tmp' / 'wm-worker*')) == []
  device = json.load(open(os.path.join(run_dir, 'vae', 'snapshot', 'device.json')))
  assert device['strategy'] == 'multi_worker'
  # The two workers' checkpoint goes on training on one device: the batch is global.
  alone = run_script('train_vae', f'--run_dir={run_dir}', '--config.vae.train_steps=50',
                     '--config.distribute.strategy=one_device')
  assert 'at step 40' in alone.stderr, alone.stderr[-2000:]
  done = json.load(open(os.path.join(run_dir, 'vae', 'DONE')))
  assert done['step'] == 50 and done['device']['replicas'] == 1


def test_a_signal_to_one_worker_stops_both_after_the_same_step(debug_encoded, tmp_path):
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  (tmp_path / 'tmp').mkdir()
  argv = stage_argv('train_sequence_model', run_dir, '--config.seq.train_steps=5000',
                    '--config.seq.save_every=100000', '--config.distribute.strategy=multi_worker')
  procs = start_workers(argv, tmp_path, 'seq')
  deadline = time.time() + 180
  metrics = os.path.join(run_dir, 'seq', 'metrics.jsonl')  # the chief logged step 5
  while not os.path.exists(metrics) and time.time() < deadline:
    assert all(p.poll() is None for p in procs), log_of(tmp_path, 'seq', 0)[-3000:]
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGUSR1)
  assert wait_all(procs, 120) == [75, 75], log_of(tmp_path, 'seq', 0)[-3000:]
  saved = [line.split('saving step ')[1].split()[0] for i in range(2)
           for line in log_of(tmp_path, 'seq', i).splitlines() if 'saving step' in line]
  assert len(saved) == 2 and saved[0] == saved[1], saved
  assert os.path.exists(os.path.join(run_dir, 'seq', 'checkpoints', f'ckpt-{saved[0]}.index'))
  assert not os.path.exists(os.path.join(run_dir, 'seq', 'DONE'))


def test_a_global_batch_that_does_not_split_is_refused_before_training(debug_data, tmp_path):
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  result = subprocess.run(
      stage_argv('train_vae', run_dir, '--config.distribute.cpu_replicas=2',
                 '--config.data.batch_size=15'),
      capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'data.batch_size=15 is the global batch and must divide by the 2 replicas' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(os.path.join(run_dir, 'vae', 'checkpoints'))


def test_the_nan_guard_stops_mirrored_training_with_the_checkpoint_kept(debug_data, tmp_path):
  """The guard sees the loss summed over the replicas, so every replica stops at the same step."""
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  result = subprocess.run(
      stage_argv('train_vae', run_dir, '--config.distribute.cpu_replicas=2',
                 '--config.vae.learning_rate=1e30', '--config.vae.train_steps=40'),
      capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=180)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'training diverged' in result.stderr and 'Traceback' not in result.stderr
  assert not os.path.exists(os.path.join(run_dir, 'vae', 'DONE'))


# ---------------------------------------------------------------------------- data per worker


@pytest.mark.parametrize('folder,read', [('records', datasets.raw_rollouts),  # 4 files: by file
                                         ('encoded', datasets.encoded_rollouts)])  # 1: by rollout
def test_two_workers_read_disjoint_parts_that_cover_the_data(debug_encoded, folder, read):
  paths = shard.shard_paths(os.path.join(debug_encoded, folder, 'train'))
  parts = [sorted(int(r['index']) for r in read(paths, shard=distribute.InputShard(i, 2, 1)))
           for i in range(2)]
  everything = sorted(int(r['index']) for r in read(paths))
  assert sorted(parts[0] + parts[1]) == everything
  assert parts[0] and parts[1], parts  # every worker has data


def test_the_input_policy_is_files_when_there_are_enough():
  paths = [f'f{i}' for i in range(4)]
  assert distribute.InputShard(1, 2, 8).files_or_records(paths) == (['f1', 'f3'], 0, 1)
  assert distribute.InputShard(1, 6, 8).files_or_records(paths) == (paths, 1, 6)
  assert distribute.InputShard(0, 1, 8).files_or_records(paths) == (paths, 0, 1)


# ---------------------------------------------------------------------------- bad input


def dist_config(**fields) -> config_lib.DistributeConfig:
  return config_lib.DistributeConfig(**fields)


def test_mirroring_without_devices_is_refused_naming_the_fixes():
  with pytest.raises(ConfigError, match='has no GPU; use distribute.strategy=one_device.*'
                     'cpu_replicas=2'):
    distribute.create(dist_config(strategy='mirrored'))


def test_multi_worker_without_workers_is_refused(monkeypatch):
  monkeypatch.delenv('TF_CONFIG', raising=False)
  monkeypatch.delenv('SLURM_STEP_NUM_TASKS', raising=False)
  with pytest.raises(ConfigError, match='needs its workers: start the stage with srun'):
    distribute.create(dist_config(strategy='multi_worker'))


def test_a_worker_count_other_than_the_started_one_is_refused(monkeypatch):
  monkeypatch.setenv('TF_CONFIG', distribute.localhost_tf_configs(2)[0])
  with pytest.raises(ConfigError, match=r'distribute.workers=3 but 2 workers were started '
                     r'\(TF_CONFIG\)'):
    distribute.create(dist_config(strategy='multi_worker', workers=3))


def test_several_workers_need_the_multi_worker_strategy():
  with pytest.raises(ConfigError, match='workers=2 asks for several workers but the strategy '
                     'is one_device'):
    distribute.create(dist_config(strategy='one_device', workers=2))


def test_distribute_fields_are_validated():
  config = config_lib.load('configs/carracing.py:debug')
  config.distribute.strategy = 'horovod'
  with pytest.raises(ConfigError, match="distribute.strategy='horovod' is not one of"):
    config_lib.validate(config)


# ---------------------------------------------------------------------------- precision


def test_auto_precision_follows_the_cpu(monkeypatch):
  monkeypatch.setattr(hardware, 'cpu_flags', lambda: frozenset({'avx2', 'avx512f'}))
  assert hardware.precision('auto') == 'float32'
  monkeypatch.setattr(hardware, 'cpu_flags', lambda: frozenset({'avx512f', 'avx512_bf16'}))
  assert hardware.precision('auto') == 'bfloat16'
  assert hardware.describe('auto')['device'] == 'CPU with avx512_bf16'
  assert hardware.precision('float32') == 'float32'


def test_a_users_cpu_kernel_choice_wins_and_asking_late_is_refused():
  """The training stages ask for oneDNN (tests/test_vae.py reads what V ran on); an explicit
  TF_ENABLE_ONEDNN_OPTS=0 keeps Eigen's kernels, and asking once TensorFlow is loaded (as it is
  in this process) would not take effect, so it is refused."""
  probe = ('from wm.infra import cpu_kernels; cpu_kernels.use_onednn(); import tensorflow; '
           'print(cpu_kernels.in_use())')
  result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**script_env(), 'TF_ENABLE_ONEDNN_OPTS': '0'})
  assert result.returncode == 0 and result.stdout.split()[-1] == 'Eigen', result
  with pytest.raises(RuntimeError, match='after TensorFlow was imported'):
    cpu_kernels.use_onednn()


def test_a_v_finished_with_the_old_precision_field_is_kept(tmp_path):
  """A rerun compares the fields a stage ran with: an older snapshot's vae.mixed_precision is
  read as vae.precision, which (like the device) does not redo V."""
  config = config_lib.to_dict(config_lib.load('configs/carracing.py:debug'))
  old = {**config, 'vae': {**{k: v for k, v in config['vae'].items() if k != 'precision'},
                           'mixed_precision': True}}
  snapshot = tmp_path / 'vae' / 'snapshot'
  snapshot.mkdir(parents=True)
  (snapshot / 'config.json').write_text(json.dumps(old))
  assert changes.changed_fields(runs.Run(str(tmp_path)), 'vae', config) == {}
  config['vae']['z_size'] += 1
  assert list(changes.changed_fields(runs.Run(str(tmp_path)), 'vae', config)) == ['vae.z_size']


def test_a_run_config_with_the_old_precision_field_still_loads(tmp_path):
  data = config_lib.to_dict(config_lib.load('configs/carracing.py:debug'))
  for old, new in ((True, 'bfloat16'), (False, 'float32')):
    vae = {k: v for k, v in data['vae'].items() if k != 'precision'}
    path = tmp_path / 'config.json'
    path.write_text(json.dumps({**data, 'vae': {**vae, 'mixed_precision': old}}))
    assert config_lib.load_json(str(path)).vae.precision == new


def test_fewer_rollouts_than_workers_are_refused():
  dist = distribute.Distribution('multi_worker', distribute.one_device().strategy, 0, 5)
  with pytest.raises(DataError, match='RUN/encoded/train holds 4 rollouts for 5 workers'):
    dist.check_rollouts(4, 'RUN/encoded/train')
  dist.check_rollouts(5, 'RUN/encoded/train')
