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
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

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
  real = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)
  thread = threading.Thread(target=_pump, args=(read_end, real, gpu_present), daemon=True,
                            name='stderr-filter')
  thread.start()
  atexit.register(_drain, real, thread)


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


def _drain(real: int, thread: threading.Thread) -> None:
  """At exit: closes the pipe's last write end here and lets the filter pass what is left."""
  sys.stderr.flush()
  os.dup2(real, 2)  # children still running keep their own copy of the write end
  thread.join(timeout=2)
