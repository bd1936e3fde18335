"""Training hygiene shared by the V, M and C stages: checkpoints that resume by rerun (with the
configured learning rate, and no leftovers of a writer killed mid-save), clocks, preemption
signals, and a NaN guard.

SLURM sends SIGTERM (preemption, or `scancel`) or the signal asked for with `--signal` (we use
USR1) before a time limit. `Preemption` turns either into a flag the loop checks between steps;
the loop then saves a checkpoint and calls `exit_for_requeue()`, whose exit status
EXIT_REQUEUE tells the sbatch wrapper to `scontrol requeue` the job. The rerun resumes.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sys

from absl import logging

from wm.infra import fileio
from wm.errors import UserError

EXIT_REQUEUE = 75  # EX_TEMPFAIL: "stopped early on purpose, run me again"
# What a tf.train.CheckpointManager save leaves behind when its process dies in the middle (seen
# after a SIGKILL): Checkpoint.write fills `ckpt-N_temp/` (part-...data-...tempstate<random>) and
# merges it into ckpt-N.{index,data-*} last; the `checkpoint` state file is written as
# checkpoint.tmp<uuid> and renamed. No reader looks at these names and nothing else removes them.
_DEAD_WRITE = re.compile(
    r'^(ckpt-\d+_temp|ckpt-\d+\..+\.tempstate\d+|checkpoint\.tmp[0-9a-f]{32})$')


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


def remove_dead_checkpoint_writes(ckpt_dir: str) -> list[str]:
  """Removes the temporaries of checkpoint saves that never finished from `ckpt_dir`.

  Call on start, before the first save: a stage has one writer per run dir, so whatever
  temporary is there belongs to a process that died. The complete checkpoints are untouched.
  """
  if not os.path.isdir(ckpt_dir):
    return []
  removed = [os.path.join(ckpt_dir, name) for name in sorted(os.listdir(ckpt_dir))
             if _DEAD_WRITE.match(name)]
  for path in removed:
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
  removed += fileio.remove_stale_tmp_files(ckpt_dir)  # model.json and the like (wm/infra/fileio.py)
  if removed:
    logging.warning('removed %d leftovers of an unfinished checkpoint save: %s', len(removed),
                    ', '.join(os.path.basename(p) for p in removed))
  return removed


def apply_learning_rate(optimizer, value: float, field: str) -> None:
  """Sets the optimizer's learning rate to the config's `field` after a restore.

  A checkpoint holds the optimizer's learning rate; without this a resumed run would keep the
  old rate while RUN/config.json records the new one.
  """
  restored = float(optimizer.learning_rate)
  if not math.isclose(restored, value, rel_tol=1e-6):  # the variable is float32
    logging.info('%s=%g replaces the learning rate %g of the checkpoint', field, value, restored)
  optimizer.learning_rate = value


def checkpointed(manager, step: int) -> bool:
  """Whether the latest checkpoint of a tf.train.CheckpointManager is of `step`."""
  return (manager.latest_checkpoint or '').endswith(f'-{step}')


def resume_note(step: int, ckpt_dir: str) -> str:
  """What rerunning a stage that stopped at `step` does (for error messages)."""
  if not step:
    return 'rerun this command'
  return f'rerun this command: it continues from step {step} (the checkpoint in {ckpt_dir})'


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
