"""wm.fileio under concurrent writers: real processes released together, many times."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO, script_env

# Each writer waits for the go file, then replaces the shared folder `rounds` times; it exits 0
# only if every replacement succeeded.
_WRITER = textwrap.dedent('''
    import os, sys, time
    from wm import fileio
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
