"""Stage 1: deterministic, resumable, safe with concurrent instances and SIGKILL."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import DEBUG, REPO, debug_config, script_env
from wm import config as config_lib, rollouts
from wm.stages import collect
from wm.errors import DataError


def small_config(**overrides):
  c = debug_config()
  c.env.max_steps = 15
  config_lib.apply_overrides(c, overrides)
  return c


def collect_all(config, folder, parallelism=1, **kwargs):
  return list(collect.collect(config, folder, parallelism, **kwargs))


def test_same_data_whatever_the_parallelism(tmp_path):
  config = small_config(**{'collect.num_rollouts': '3'})
  collect_all(config, tmp_path / 'a', parallelism=1)
  collect_all(config, tmp_path / 'b', parallelism=2)
  collect_all(config, tmp_path / 'c', num_tasks=2, task_index=1)
  collect_all(config, tmp_path / 'c', num_tasks=2, task_index=0)
  for index in range(3):
    a = rollouts.load(rollouts.path_for(tmp_path / 'a', index))
    for other in ('b', 'c'):
      b = rollouts.load(rollouts.path_for(tmp_path / other, index))
      for key in rollouts.KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f'{other} {index} {key}')
  assert a['frames'].shape == (16, 64, 64, 3) and a['truncated'][-1]


def test_rerun_tops_up_and_never_beyond(tmp_path):
  config = small_config(**{'collect.num_rollouts': '2'})
  assert len(collect_all(config, tmp_path)) == 2
  first = os.stat(rollouts.path_for(tmp_path, 0)).st_mtime_ns
  assert collect_all(config, tmp_path) == []
  config.collect.num_rollouts = 3
  results = collect_all(config, tmp_path)
  assert [r.index for r in results] == [2]
  assert rollouts.list_indices(tmp_path) == [0, 1, 2]
  assert os.stat(rollouts.path_for(tmp_path, 0)).st_mtime_ns == first


def test_truncated_rollout_is_named(tmp_path):
  collect_all(small_config(**{'collect.num_rollouts': '1'}), tmp_path)
  path = rollouts.path_for(tmp_path, 0)
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])
  with pytest.raises(DataError, match=re.escape(str(path)) + '.*truncated or corrupted'):
    rollouts.load(path)


def collect_command(run_dir, *args):
  return [sys.executable, os.path.join(REPO, 'scripts', 'collect_rollouts.py'),
          f'--run_dir={run_dir}', f'--config={DEBUG}', *args]


def test_sigkill_leaves_only_complete_rollouts_and_rerun_finishes(tmp_path):
  run_dir = tmp_path / 'run'
  args = ['--config.collect.num_rollouts=10', '--config.env.max_steps=60', '--parallelism=2']
  process = subprocess.Popen(collect_command(run_dir, *args), env=script_env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
  folder = run_dir / 'rollouts'
  deadline = time.time() + 60
  while len(rollouts.list_indices(folder)) < 2 and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(process.pid, signal.SIGKILL)  # the main process and its workers, mid-episode
  process.wait()
  done = rollouts.list_indices(folder)
  assert 2 <= len(done) < 10, done
  for index in done:
    rollouts.load(rollouts.path_for(folder, index))  # every visible rollout is complete
  assert not os.path.exists(folder / 'DONE')
  subprocess.run(collect_command(run_dir, *args), env=script_env(), cwd=REPO, check=True,
                 capture_output=True)
  assert rollouts.list_indices(folder) == list(range(10))
  assert os.path.exists(folder / 'DONE')
  assert not [n for n in os.listdir(folder) if n.startswith('.') or n.endswith('.claim')]


def test_concurrent_instances_share_one_folder(tmp_path):
  run_dir = tmp_path / 'run'
  args = ['--config.collect.num_rollouts=8', '--config.env.max_steps=30', '--nostore_snapshot']
  procs = [subprocess.Popen(collect_command(run_dir, *args), env=script_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=120) for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs
  collected = [int(re.search(r'collected (\d+) rollouts here', err).group(1))
               for _, err in outputs]
  assert sum(collected) == 8, collected  # every rollout collected exactly once
  assert rollouts.list_indices(run_dir / 'rollouts') == list(range(8))


def test_a_rollout_claimed_by_a_job_killed_on_another_node_is_collected(tmp_path):
  # The claim of a job killed on node-b stays behind; a requeued job on this node must wait for
  # its lease to expire (4 s here), take it over and finish with DONE, not exit 0 without it.
  # The claim is renewed (as its holder would) until the job says it waits: a slow start on a
  # busy machine must not find it expired already.
  folder = tmp_path / 'rollouts'
  folder.mkdir()
  claim = folder / 'rollout-000002.npz.claim'
  claim.write_text('node-b 4242')
  env = dict(script_env(), WM_CLAIM_LEASE_S='4')
  log = tmp_path / 'stderr.txt'
  with open(log, 'w') as stderr:
    process = subprocess.Popen(
        [sys.executable, 'scripts/collect_rollouts.py', f'--run_dir={tmp_path}',
         f'--config={DEBUG}', '--config.collect.num_rollouts=4', '--config.env.max_steps=10'],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    deadline = time.time() + 240
    while 'waiting for' not in log.read_text() and process.poll() is None:
      assert time.time() < deadline, log.read_text()[-3000:]
      os.utime(claim)
      time.sleep(0.2)
    returncode = process.wait(timeout=240)
  result = log.read_text()
  assert returncode == 0, result[-3000:]
  assert 'waiting for 1 rollouts claimed by other processes (node-b 4242)' in result
  assert rollouts.list_indices(folder) == [0, 1, 2, 3]
  assert (folder / 'DONE').exists()
  assert not claim.exists()
