"""wm.workers: real spawned processes that die, hang, ignore SIGTERM or lose their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, process_alive, run_script, script_env
from wm.infra import workers


def _square(x: int) -> int:
  return x * x


def _die_on_three(x: int) -> int:
  if x == 3:
    os.kill(os.getpid(), signal.SIGKILL)
  return x


def _hang_on_two(x: int) -> int:
  if x == 2:
    time.sleep(600)
  return x


def _mark_and_hang(path: str) -> None:
  with open(path, 'w') as f:
    f.write(str(os.getpid()))
  time.sleep(600)


def _ignore_sigterm() -> None:
  signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as pygame/SDL's own handler effectively does


def _fail_on_one(x: int) -> int:
  if x == 1:
    raise ValueError('bad task one')
  return x


def test_results_come_back_in_order_and_unordered():
  with workers.WorkerPool(2, _square, name='t') as pool:
    assert pool.map(range(7)) == [x * x for x in range(7)]
    assert sorted(pool.imap_unordered(range(5))) == [0, 1, 4, 9, 16]


def test_a_dead_worker_is_named_with_its_task_not_waited_on():
  start = time.monotonic()
  with pytest.raises(workers.WorkerError, match=r't worker \d \(pid \d+\) was killed by signal '
                     r'SIGKILL while on item 3; rerun'):
    with workers.WorkerPool(2, _die_on_three, name='t', describe=lambda x: f'item {x}') as pool:
      pool.map(range(6))
  assert time.monotonic() - start < 60


def test_a_stuck_worker_is_killed_and_named():
  with workers.WorkerPool(2, _hang_on_two, name='t', task_timeout=2,
                          describe=lambda x: f'item {x}') as pool:
    with pytest.raises(workers.WorkerError, match='stuck on item 2: no answer in 2s'):
      pool.map(range(4))
    stuck = [w.process for w in pool.workers]
  assert not any(p.is_alive() for p in stuck)


def test_a_worker_error_carries_the_workers_traceback():
  with workers.WorkerPool(1, _fail_on_one, name='t', describe=lambda x: f'item {x}') as pool:
    with pytest.raises(workers.WorkerError, match=r'(?s)failed on item 1:.*ValueError: bad task one'):
      pool.map(range(3))


def test_close_kills_workers_that_ignore_sigterm():
  pool = workers.WorkerPool(2, _square, _ignore_sigterm, name='t', grace=1)
  assert pool.map([1, 2]) == [1, 4]
  procs = [w.process for w in pool.workers]
  for p in procs:
    os.kill(p.pid, signal.SIGTERM)  # ignored, as pygame's handler did
  pool.workers[0].conn.send(None)  # still answers the polite stop
  start = time.monotonic()
  pool.close()
  assert time.monotonic() - start < 30
  assert not any(p.is_alive() for p in procs)


@pytest.mark.parametrize('busy', [False, True], ids=['idle', 'busy'])
def test_workers_exit_when_their_parent_is_killed(tmp_path, busy):
  """Idle workers find their pipe closed; a busy one (on a task of 10 minutes) is killed by the
  kernel when its parent dies, not left to finish a task nobody will read."""
  pids, marker = tmp_path / 'pids', tmp_path / 'busy'
  code = textwrap.dedent(f'''
      import os, time
      from wm.infra import workers
      import test_workers
      pool = workers.WorkerPool(2, test_workers._mark_and_hang, name='t')
      open({str(pids)!r}, 'w').write(' '.join(str(w.process.pid) for w in pool.workers))
      pool.map([{str(marker)!r}]) if {busy} else time.sleep(600)
  ''')
  env = script_env()
  env['PYTHONPATH'] = os.path.join(REPO, 'tests') + os.pathsep + env['PYTHONPATH']
  parent = subprocess.Popen([sys.executable, '-c', code], env=env, cwd=REPO)
  try:
    for _ in range(600):
      if (pids.exists() and pids.read_text()
          and (not busy or marker.exists() and marker.read_text())):
        break
      time.sleep(0.1)
    children = [int(p) for p in pids.read_text().split()]
    assert not busy or int(marker.read_text()) in children  # a worker is on the 10-minute task
  finally:
    parent.kill()
    parent.wait()
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline and any(process_alive(p) for p in children):
    time.sleep(0.1)
  assert not any(process_alive(p) for p in children), children


@pytest.mark.parametrize('env_name', ['Pendulum-v1', 'CartPole-v1'])
def test_collection_on_pygame_environments_always_finishes(tmp_path, env_name):
  # With multiprocessing.Pool, about one run in three hung here after writing every rollout: the
  # workers survived the SIGTERM of Pool.terminate() (SDL's handler) and the parent waited.
  for attempt in range(4):
    run_dir = tmp_path / f'run{attempt}'
    result = run_script('collect_rollouts', f'--run_dir={run_dir}', '--parallelism=2',
                        f'--config.env.name={env_name}', '--config.collect.num_rollouts=4',
                        '--config.env.max_steps=20', timeout=120)
    assert (run_dir / 'rollouts' / 'DONE').exists(), result.stdout[-2000:]
