"""A pool of worker processes that never outlives its owner and never hangs it.

`multiprocessing.Pool` loses a task when a worker dies (the pool replaces the worker and waits
for the lost result forever), and closes by sending SIGTERM, which a worker that made a pygame
environment survives (SDL installs its own handler). This pool:

- gives each worker its own pipe, so the parent always knows which task a worker holds;
- names a worker that died (its exit code or signal) or is stuck (no result within
  `task_timeout` seconds: it is killed) together with its task, as a `WorkerError`;
- closes by telling workers to stop, then kills (SIGKILL) any that has not exited within
  `grace` seconds;
- dies with its parent: an idle worker whose parent died finds its pipe closed and exits, and a
  busy one is killed by the kernel (SIGKILL on the parent's death, whatever killed the parent), not
  left to finish a task nobody will read, or to hang on one forever.

Workers are spawned (never forked: TensorFlow's threads do not survive a fork) and ignore SIGINT:
Ctrl-C reaches the whole process group, and the parent alone decides what happens next.
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
from typing import Any, Callable, Iterable, Iterator

from wm.errors import UserError


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(sig: int = signal.SIGTERM) -> None:
  """`sig` when the process that started this one dies, however it dies (a kill -9 included).
  The `preexec_fn` of a stage's process (or a judge's, wm/stages/seq.py), with SIGTERM: it saves
  and stops as on a preemption instead of running on alone, unseen, into a run dir that a rerun
  would then share with it; a pool worker asks for SIGKILL (_serve)."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
  except (OSError, AttributeError):  # not Linux: a killed parent leaves its child running
    pass


class WorkerError(UserError):
  """A worker process died, got stuck, or could not start. Rerunning the stage resumes it."""


class _Worker:
  def __init__(self, context, index: int, name: str, fn: Callable, initializer, initargs):
    self.index, self.label = index, f'{name} worker {index}'
    self.conn, child = context.Pipe()
    self.process = context.Process(target=_serve, args=(child, fn, initializer, initargs),
                                   name=f'{name}-{index}', daemon=True)
    self.process.start()
    child.close()
    self.ready = False  # its initializer has finished
    self.task: tuple[int, Any] | None = None  # (position, task) it is working on
    self.since = time.monotonic()  # when it started, or got its task

  def describe_exit(self) -> str:
    code = self.process.exitcode
    if code is None:
      return 'stopped answering'
    if code < 0:
      return f'was killed by signal {signal.Signals(-code).name}'
    return f'exited with status {code}'


class WorkerPool:
  """`size` processes each running `fn(task)`; `initializer(*initargs)` once in each first.

  `describe(task)` names a task in error messages ("rollout 17"). `task_timeout` (seconds, or
  None for no limit) is how long one task may take before its worker counts as stuck;
  `start_timeout` the same for the initializer (loading TensorFlow and models).
  """

  def __init__(self, size: int, fn: Callable[[Any], Any], initializer: Callable | None = None,
               initargs: tuple = (), name: str = 'pool', task_timeout: float | None = None,
               describe: Callable[[Any], str] = repr, grace: float = 10.0,
               start_timeout: float = 900.0):
    os.environ.setdefault('SDL_NO_SIGNAL_HANDLERS', '1')  # inherited by the spawned workers
    context = multiprocessing.get_context('spawn')
    self.name, self.task_timeout, self.describe, self.grace = name, task_timeout, describe, grace
    self.start_timeout = start_timeout
    self.workers = [_Worker(context, i, name, fn, initializer, initargs) for i in range(size)]
    self.closed = False

  def __enter__(self) -> 'WorkerPool':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def imap_unordered(self, tasks: Iterable[Any]) -> Iterator[Any]:
    """Yields `fn(task)` for every task as workers finish them, in completion order."""
    for _, result in self._run(tasks):
      yield result

  def map(self, tasks: Iterable[Any]) -> list[Any]:
    """`fn(task)` for every task, in the tasks' order."""
    tasks = list(tasks)
    results = [None] * len(tasks)
    for position, result in self._run(tasks):
      results[position] = result
    return results

  def _run(self, tasks: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    pending = collections.deque(enumerate(tasks))
    outstanding = 0
    while pending or outstanding:
      for worker in self.workers:
        if worker.ready and worker.task is None and pending:
          worker.task, worker.since = pending.popleft(), time.monotonic()
          worker.conn.send(worker.task)
          outstanding += 1
      for worker, message in self._wait():
        kind, payload = message
        if kind == 'ready':
          worker.ready = True
        elif kind == 'error':
          raise self._error(worker, payload)
        else:
          position = worker.task[0]
          worker.task = None
          outstanding -= 1
          yield position, payload

  def _wait(self) -> list[tuple[_Worker, tuple]]:
    """Messages from workers that have one; raises WorkerError for a dead or stuck worker."""
    by_handle = {}
    for worker in self.workers:
      by_handle[worker.conn] = worker
      by_handle[worker.process.sentinel] = worker
    ready = multiprocessing.connection.wait(list(by_handle), timeout=self._next_deadline())
    messages = []
    for handle in ready:
      worker = by_handle[handle]
      if handle is worker.conn:
        try:
          messages.append((worker, worker.conn.recv()))
        except (EOFError, OSError):
          raise self._died(worker) from None
    for handle in ready:  # a dead worker whose last message was read above is handled next time
      worker = by_handle[handle]
      if handle is worker.process.sentinel and not worker.conn.poll():
        raise self._died(worker)
    self._check_stuck()
    return messages

  def _limit(self, worker: _Worker) -> float | None:
    """Seconds `worker` may spend on what it is doing now (None: no limit, or idle)."""
    if not worker.ready:
      return self.start_timeout
    return self.task_timeout if worker.task is not None else None

  def _next_deadline(self) -> float | None:
    ends = [w.since + self._limit(w) for w in self.workers if self._limit(w) is not None]
    return max(0.0, min(ends) - time.monotonic()) + 0.01 if ends else None

  def _check_stuck(self) -> None:
    now = time.monotonic()
    for worker in self.workers:
      limit = self._limit(worker)
      if limit is not None and now - worker.since > limit:
        worker.process.kill()
        worker.process.join(5)
        what = f'on {self.describe(worker.task[1])}' if worker.task is not None else 'starting'
        raise WorkerError(
            f'{worker.label} (pid {worker.process.pid}) was stuck {what}: no answer in {limit:.0f}s'
            f', so it was killed; rerun the same command to continue (finished work '
            'is kept)')

  def _died(self, worker: _Worker) -> WorkerError:
    worker.process.join(5)  # reap it, for its exit code
    what = (f'while on {self.describe(worker.task[1])}' if worker.task is not None
            else 'while starting' if not worker.ready else 'while idle')
    return WorkerError(f'{worker.label} (pid {worker.process.pid}) {worker.describe_exit()} '
                       f'{what}; rerun the same command to continue (finished work is kept)')

  def _error(self, worker: _Worker, payload: tuple[BaseException | None, str]) -> BaseException:
    error, text = payload
    if isinstance(error, UserError):
      return error  # a clear message already (a bad environment, a missing file)
    where = (f'on {self.describe(worker.task[1])}' if worker.task is not None
             else 'while starting')
    return WorkerError(f'{worker.label} failed {where}:\n{text.rstrip()}')

  def close(self) -> None:
    """Stops every worker: politely, then after `grace` seconds by SIGKILL. Idempotent."""
    if self.closed:
      return
    self.closed = True
    for worker in self.workers:
      try:
        worker.conn.send(None)
      except OSError:
        pass  # already gone
    deadline = time.monotonic() + self.grace
    for worker in self.workers:
      worker.process.join(max(0.0, deadline - time.monotonic()))
      if worker.process.is_alive():
        worker.process.kill()
        worker.process.join(5)
      worker.conn.close()


def _serve(conn, fn: Callable, initializer: Callable | None, initargs: tuple) -> None:
  """A worker's loop: run the initializer, then one task per message until told to stop."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  # SIGKILL, not SIGTERM: evaluation workers and SDL's handler ignore SIGTERM. A worker writes
  # files as every writer here does (a temporary name, then a rename), so a kill loses no file.
  end_with_parent(signal.SIGKILL)
  if os.getppid() != multiprocessing.parent_process().pid:
    return  # the parent died before the line above: no signal will come
  try:
    if initializer is not None:
      initializer(*initargs)
    conn.send(('ready', None))
    while True:
      try:
        message = conn.recv()
      except (EOFError, OSError):
        return  # the parent is gone
      if message is None:
        return
      conn.send(('result', fn(message[1])))
  except (BrokenPipeError, EOFError):
    return
  except BaseException as e:  # pylint: disable=broad-except
    _send_error(conn, e)


def _send_error(conn, error: BaseException) -> None:
  text = ''.join(traceback.format_exception(error))
  try:
    conn.send(('error', (error, text)))
  except Exception:  # pylint: disable=broad-except
    conn.send(('error', (None, text)))  # the exception itself does not pickle
