"""Training hygiene shared by the V, M and C stages: checkpoints that resume by rerun, clocks,
preemption signals, and a NaN guard.

SLURM sends SIGTERM (preemption, or `scancel`) or the signal asked for with `--signal` (we use
USR1) before a time limit. `Preemption` turns either into a flag the loop checks between steps;
the loop then saves a checkpoint and calls `exit_for_requeue()`, whose exit status
EXIT_REQUEUE tells the sbatch wrapper to `scontrol requeue` the job. The rerun resumes.
"""

from __future__ import annotations

import math
import signal
import sys

from absl import logging

from wm.errors import UserError

EXIT_REQUEUE = 75  # EX_TEMPFAIL: "stopped early on purpose, run me again"


class NonFiniteLossError(UserError):
  """Training diverged; the last good checkpoint is kept."""


class Every:
  """A clock on a step counter: `every(step)` is true once per `period` steps."""

  def __init__(self, period: int):
    self.period = period

  def __call__(self, step: int) -> bool:
    return self.period > 0 and step % self.period == 0


class Preemption:
  """Catches SIGTERM and SIGUSR1 while active: `requested` becomes True, nothing else happens."""

  SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

  def __init__(self):
    self.requested = False
    self.signal_name = None
    self._previous = {}

  def __enter__(self) -> 'Preemption':
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    logging.warning('%s received: saving and stopping at the next step', self.signal_name)


def exit_for_requeue(what: str) -> None:
  logging.warning('stopped early for preemption after saving %s; exit %d asks for a requeue',
                  what, EXIT_REQUEUE)
  sys.exit(EXIT_REQUEUE)


def check_finite(name: str, value: float, step: int, checkpoint_dir: str) -> None:
  if not math.isfinite(value):
    raise NonFiniteLossError(
        f'{name} is {value} at step {step}: training diverged. The last good checkpoint in '
        f'{checkpoint_dir} is intact; lower the learning rate (or rerun with --check_numerics '
        'to find the op) and rerun the same command to continue from it.')
