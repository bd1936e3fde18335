"""wm.infra.fileio under concurrent writers and claims: real processes, many at once, some killed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from conftest import REPO, script_env
from wm.infra import fileio

# Each writer waits for the go file, then replaces the shared folder `rounds` times; it exits 0
# only if every replacement succeeded.
_WRITER = textwrap.dedent('''
    import os, sys, time
    from wm.infra import fileio
    target, go, writer, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    while not os.path.exists(go):
      time.sleep(0.0002)
    for r in range(rounds):
      with fileio.atomic_dir(target) as tmp:
        for name in ('a', 'b', 'c'):
          with open(os.path.join(tmp, name), 'w') as f:
            f.write(f'{writer} {r}')
''')


def _start_together(target: str, go: str, writers: int, rounds: int) -> list[subprocess.Popen]:
  procs = [subprocess.Popen([sys.executable, '-c', _WRITER, target, go, str(w), str(rounds)],
                            env=script_env(), cwd=REPO, stderr=subprocess.PIPE, text=True)
           for w in range(writers)]
  return procs


def test_atomic_dir_tolerates_any_number_of_writers_starting_together(tmp_path):
  # Array tasks starting in the same second replace RUN/<stage>/snapshot at once; a rename onto
  # a peer's full folder failed with ENOTEMPTY and killed the task.
  for trial in range(3):
    folder = tmp_path / f'trial{trial}'
    folder.mkdir()
    target, go = str(folder / 'snapshot'), str(folder / 'go')
    procs = _start_together(target, go, writers=8, rounds=15)
    open(go, 'w').close()
    errors = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in errors), [e for e in errors if e[0]][:2]
    contents = {open(os.path.join(target, n)).read() for n in ('a', 'b', 'c')}
    assert len(contents) == 1, contents  # one writer's whole folder, never a mix
    leftovers = [n for n in os.listdir(folder) if n not in ('snapshot', 'go')]
    assert leftovers == [], leftovers


def test_claims_of_killed_unreaped_workers_are_taken_over(tmp_path):
  child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  target = str(tmp_path / 'rollout-000001.npz')
  with open(target + '.claim', 'w') as f:
    f.write(f'{os.uname().nodename.split(".")[0]} {child.pid}')
  with fileio.claim(target) as held:
    assert not held  # a live process holds it
  child.kill()
  time.sleep(0.2)  # killed but not reaped yet: a zombie
  assert open(f'/proc/{child.pid}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z'
  with fileio.claim(target) as held:
    assert held
  child.wait()


_RACE = '''
import os, sys, time
from wm.infra import fileio
folder, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
  pass
won = 0
for i in range(200):
  path = os.path.join(folder, f'item-{i}')
  with fileio.claim(path) as held:
    if held and not os.path.exists(path):
      fileio.write_text(path, str(os.getpid()))
      won += 1
print(won)
'''


def test_racing_claims_produce_every_file_exactly_once(tmp_path):
  # Four processes start together on the same 200 paths: no path may be produced twice.
  start = time.time() + 3
  procs = [subprocess.Popen([sys.executable, '-c', _RACE, str(tmp_path), str(start)],
                            env=script_env(), cwd=REPO, stdout=subprocess.PIPE, text=True)
           for _ in range(4)]
  won = [int(p.communicate(timeout=120)[0]) for p in procs]
  assert sum(won) == 200, won
  assert len([n for n in os.listdir(tmp_path) if n.startswith('item-')]) == 200


def test_a_claim_of_another_host_is_taken_over_only_once_its_lease_expires(tmp_path):
  # A SLURM job killed on node-b left this claim; this host cannot ask node-b about its pid.
  target = str(tmp_path / 'rollout-000003.npz')
  with open(target + '.claim', 'w') as f:
    f.write('node-b 4242')
  with fileio.claim(target) as held:
    assert not held  # renewed recently: node-b may still be working on it
  old = time.time() - fileio.LEASE_S - 5
  os.utime(target + '.claim', (old, old))
  with fileio.claim(target) as held:
    assert held
    assert fileio.claim_holder(target) == f'{fileio._HOST} {os.getpid()}'
  assert fileio.claim_holder(target) is None


def test_a_held_claim_is_renewed_and_not_released_once_taken_over(tmp_path, monkeypatch):
  monkeypatch.setattr(fileio, 'RENEW_S', 0.05)
  target = str(tmp_path / 'item')
  with fileio.claim(target) as held:
    assert held
    old = time.time() - 1000
    os.utime(target + '.claim', (old, old))
    time.sleep(0.5)
    assert time.time() - os.stat(target + '.claim').st_mtime < 10  # renewed
    with open(target + '.claim', 'w') as f:
      f.write('node-b 7')  # presumed dead, taken over by node-b
  assert fileio.claim_holder(target) == 'node-b 7'  # node-b's claim is left alone
