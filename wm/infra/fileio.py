"""Atomic file writes: a reader never sees a partial file, concurrent writers never collide.

Every writer writes to a temporary name in the target's folder (host and pid in the name, so
several processes and SLURM jobs can share the folder), fsyncs, then `os.replace`s into place.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import threading
from typing import Any, Iterator

from wm.errors import DataError

_HOST = socket.gethostname().split('.')[0]
TMP_MARK = '.tmp-'


def tmp_name(path: str) -> str:
  """A temporary name beside `path`, unique to this host and process."""
  folder, base = os.path.split(path)
  return os.path.join(folder, f'.{base}{TMP_MARK}{_HOST}-{os.getpid()}')


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path to write; on success it is fsynced and renamed to `path`."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = tmp_name(path)
  try:
    yield tmp
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or '.')
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
  """Yields a temporary folder to fill; on success it replaces the folder `path` whole.

  Any number of processes may replace the same folder at once (SLURM array tasks starting in the
  same second all write the stage's snapshot): the last one wins, and a reader sees one writer's
  whole folder, or for an instant none.
  """
  tmp = tmp_name(path)
  os.makedirs(tmp)
  try:
    yield tmp
    _replace_dir(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: str, path: str, attempts: int = 1000) -> None:
  """Renames folder `tmp` to `path`, moving aside (then deleting) whatever folder is there."""
  for attempt in range(attempts):
    try:
      os.rename(tmp, path)  # replaces an empty folder; fails on a full one
      return
    except OSError as e:
      if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
        raise
    # A peer's folder is in place: move it aside under a name of ours and try again. If another
    # peer moved it first, the rename fails and the loop retries with the path free or refilled.
    old = tmp_name(f'{path}-old{attempt}')
    try:
      os.rename(path, old)
    except FileNotFoundError:
      continue
    shutil.rmtree(old, ignore_errors=True)
  raise OSError(f'could not put {tmp} in place of {path}: {attempts} concurrent writers won first')


def write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp, open(tmp, 'wb') as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode())


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2) + '\n')


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def read_jsonl(path: str) -> list[dict]:
  """The JSON objects of a .jsonl file, one a line ([] when it is missing); a line cut short by
  a kill, or anything else that is not an object, is skipped."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return []
  rows = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if isinstance(row, dict):
      rows.append(row)
  return rows


def read_json_checked(path: str, missing: str, fix: str) -> Any:
  """Reads JSON or raises a DataError: `missing` says what its absence means, `fix` what to do."""
  if not os.path.exists(path):
    raise DataError(f'{path} does not exist: {missing}; {fix}')
  try:
    return read_json(path)
  except ValueError as e:
    raise DataError(f'{path} is not valid JSON ({e}); {fix}') from None


def fsync_dir(folder: str) -> None:
  fd = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def pid_alive(pid: int) -> bool:
  """Whether process `pid` of this host is running (a zombie, killed but not reaped, is not)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:
    with open(f'/proc/{pid}/stat') as f:
      state = f.read().rsplit(')', 1)[1].split()[0]
  except (OSError, IndexError):
    return True  # no /proc: trust kill()
  return state not in ('Z', 'X')


def remove_stale_tmp_files(folder: str) -> list[str]:
  """Removes temporary files left in `folder` by dead processes of this host."""
  removed = []
  for path in glob.glob(os.path.join(glob.escape(folder), f'.*{TMP_MARK}{_HOST}-*')):
    try:
      pid = int(path.rsplit('-', 1)[1])
    except ValueError:
      continue
    if pid != os.getpid() and not pid_alive(pid):
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      removed.append(path)
  return removed


# A claim is a lease: its holder touches it every RENEW_S seconds, and one not touched for LEASE_S
# seconds is stale whoever wrote it. That is what lets a SLURM job requeued onto another node take
# over the work of the killed one, whose process this host cannot ask about.
LEASE_S = float(os.environ.get('WM_CLAIM_LEASE_S', 300))
RENEW_S = LEASE_S / 10


@contextlib.contextmanager
def claim(path: str) -> Iterator[bool]:
  """An exclusive claim on producing `path`, shared by processes and SLURM jobs on any hosts.

  Yields True if this process holds the claim (renewed while held, released on exit), False if
  another live holder has it. A claim is taken over when its holder is a dead process of this
  host (a SIGKILLed worker), or when it was not renewed for LEASE_S seconds (a holder on another
  host that died; its age is read against the file system's clock, not this host's).
  """
  lock = path + '.claim'
  owner = f'{_HOST} {os.getpid()}'
  held = _try_create(lock, owner)
  if not held:
    held = _take_over_if_stale(lock, owner)
  stop = threading.Event()
  renewer = None
  if held:
    renewer = threading.Thread(target=_renew, args=(lock, owner, stop), daemon=True)
    renewer.start()
  try:
    yield held
  finally:
    if renewer is not None:
      stop.set()
      renewer.join()
      if claim_holder(path) == owner:  # not taken over meanwhile (we were presumed dead)
        with contextlib.suppress(FileNotFoundError):
          os.remove(lock)


def claim_holder(path: str) -> str | None:
  """'host pid' of the claim on producing `path`, or None when unclaimed."""
  try:
    with open(path + '.claim') as f:
      return f.read()
  except FileNotFoundError:
    return None


def _renew(lock: str, owner: str, stop: threading.Event) -> None:
  while not stop.wait(RENEW_S):
    if claim_holder(lock[:-len('.claim')]) != owner:
      return  # taken over: it is not ours to renew
    with contextlib.suppress(FileNotFoundError):
      os.utime(lock)


def _try_create(lock: str, owner: str) -> bool:
  """Creates `lock` holding `owner`, or returns False if it exists.

  The owner is written first under a temporary name and hard-linked into place, so no process
  ever reads a lock file without its owner (an empty one would look stale).
  """
  tmp = tmp_name(lock)
  with open(tmp, 'w') as f:
    f.write(owner)
  try:
    os.link(tmp, lock)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def _stale(lock: str, previous: str) -> bool:
  """Whether the claim `lock` holding `previous` may be taken over."""
  host, _, pid = previous.partition(' ')
  if host == _HOST and pid.isdigit():
    return not pid_alive(int(pid))
  try:
    age = _fs_now(os.path.dirname(lock) or '.') - os.stat(lock).st_mtime
  except FileNotFoundError:
    return False  # released meanwhile: the caller retries creating it
  return age > LEASE_S


def _fs_now(folder: str) -> float:
  """The time by the clock of the file system holding `folder` (hosts' clocks may differ)."""
  probe = tmp_name(os.path.join(folder, 'clock'))
  with open(probe, 'w'):
    pass
  try:
    return os.stat(probe).st_mtime
  finally:
    os.remove(probe)


def _take_over_if_stale(lock: str, owner: str) -> bool:
  """Replaces a stale lock (see _stale); False if its owner lives or another process took it
  first."""
  try:
    with open(lock) as f:
      previous = f.read()
  except FileNotFoundError:
    return _try_create(lock, owner)
  if not _stale(lock, previous):
    return False
  # Move the stale lock aside under a name of our own: of several processes that saw it stale,
  # only one renames it; the others find it gone, or find a fresh lock they must not take.
  aside = tmp_name(lock + '-stale')
  try:
    os.rename(lock, aside)
  except FileNotFoundError:
    return False
  with open(aside) as f:
    moved = f.read()
  if moved != previous:  # we moved another process's fresh lock: give it back
    with contextlib.suppress(FileExistsError):
      os.link(aside, lock)
    os.remove(aside)
    return False
  os.remove(aside)
  return _try_create(lock, owner)
