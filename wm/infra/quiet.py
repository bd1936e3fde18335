"""Keeps TensorFlow's start-up boilerplate out of a stage's output, and everything else in it.

TensorFlow's C++ side writes notices to file descriptor 2 before its logging is configured, so
TF_CPP_MIN_LOG_LEVEL does not silence them: on a CPU run about half of what the debug pipeline
printed was "oneDNN custom operations are on", "Could not find cuda drivers", a "failed call to
cuInit" marked as an error on a machine with no GPU, and the CPU instruction notice. `install()`
routes descriptor 2 through a filter thread that drops exactly those lines (BOILERPLATE) and
passes every other byte on, real warnings and errors included, and sets TF_CPP_MIN_LOG_LEVEL=1
(unless set) for TensorFlow's later INFO lines (XLA's "service initialized" and the like). Call
it first thing in an entry point, before TensorFlow is imported; WM_SHOW_TF_BOILERPLATE=1 turns
it off.

The filter is a forked process, not a thread: a process that dies without Python's exit handlers
(MPI_Init failing and calling exit(), an abort, os._exit) leaves its last words in the pipe, and
only a reader outside it can still pass them on. The filter ignores SIGINT, SIGTERM, SIGUSR1 and
SIGHUP (a cluster signals every process of a job step) and exits once every writer has closed
the pipe.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import time

BOILERPLATE = [re.compile(p) for p in (
    r'^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$',
    r'^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on',
    r'^I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers',
    r'^I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized',
    r'^To enable the following instructions: .* rebuild TensorFlow with the appropriate '
    r'compiler flags\.$',
    r'^I\d{4} [\d:. ]+\d+ functional_saver\.py:\d+\] Sharding callback duration: ',
)]
# A failed cuInit is boilerplate only where there is no NVIDIA device to find.
NO_GPU = [re.compile(r'^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ')]

_installed = False


def is_boilerplate(line: str, gpu_present: bool = False) -> bool:
  patterns = BOILERPLATE if gpu_present else BOILERPLATE + NO_GPU
  return any(p.search(line) for p in patterns)


def install() -> None:
  """Filters this process's descriptor 2 (and its children's, which inherit it). Idempotent."""
  global _installed
  if _installed or os.environ.get('WM_SHOW_TF_BOILERPLATE') == '1':
    return
  _installed = True
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # C++ INFO off; warnings and errors stay
  gpu_present = os.path.exists('/dev/nvidiactl')
  sys.stderr.flush()
  read_end, write_end = os.pipe()
  pid = os.fork()
  if pid == 0:  # the filter: fd 2 here is still the real stderr
    try:
      devnull = os.open(os.devnull, os.O_RDWR)
      os.dup2(devnull, 0)  # hold nothing of the parent's but its stderr: a caller reading the
      os.dup2(devnull, 1)  # parent's stdout sees its end when the parent ends
      os.closerange(3, read_end)
      os.closerange(read_end + 1, os.sysconf('SC_OPEN_MAX'))
      for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
      _pump(read_end, 2, gpu_present)
    finally:
      os._exit(0)
  os.close(read_end)
  real = os.dup(2)
  os.dup2(write_end, 2)
  os.close(write_end)
  atexit.register(_drain, real, pid)


def _pump(read_end: int, real: int, gpu_present: bool) -> None:
  with os.fdopen(read_end, 'rb', buffering=0) as pipe:
    pending = b''
    while chunk := pipe.read(65536):
      pending += chunk
      *lines, pending = pending.split(b'\n')
      kept = [line for line in lines
              if not is_boilerplate(line.decode('utf-8', 'replace'), gpu_present)]
      if kept:
        os.write(real, b'\n'.join(kept) + b'\n')
    if pending:
      os.write(real, pending)


def _drain(real: int, pid: int, timeout_s: float = 2.0) -> None:
  """At exit: closes this process's write end and waits (briefly) for the filter to pass what
  is left, so the last lines come out before the process is seen to end."""
  sys.stderr.flush()
  os.dup2(real, 2)  # children still running keep their own copy of the write end
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    try:
      if os.waitpid(pid, os.WNOHANG)[0]:
        return
    except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): it has ended
      return
    time.sleep(0.005)
