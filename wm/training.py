"""Training hygiene shared by the V, M and C stages: checkpoints that resume by rerun (with the
configured learning rate, and no leftovers of a writer killed mid-save), clocks, preemption
signals, a NaN guard, the error for a shard that fails to read, and `Metrics`: V's and M's
scalars in TensorBoard and in STAGE/metrics.jsonl.

V and M keep their resume state the same way, in `Checkpoints`: STAGE/checkpoints/ holds a
tf.train.CheckpointManager's ckpt-N files (tracked objects `model`, `optimizer`, `step`) and
model.json, the model they are of.

SLURM sends SIGTERM (preemption, or `scancel`) or the signal asked for with `--signal` (we use
USR1) before a time limit. `Preemption` turns either into a flag the loop checks between steps;
the loop then saves a checkpoint and calls `exit_for_requeue()`, whose exit status
EXIT_REQUEUE tells the sbatch wrapper to `scontrol requeue` the job. The rerun resumes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
from typing import Any, Callable, NoReturn

import tensorflow as tf
from absl import logging

from wm import datasets
from wm.errors import ConfigError, DataError, UserError
from wm.infra import fileio, runs
from wm.stages import shard

EXIT_REQUEUE = 75  # EX_TEMPFAIL: "stopped early on purpose, run me again"
METRICS = 'metrics.jsonl'  # STAGE/metrics.jsonl (Metrics)
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
  restored = float(tf.convert_to_tensor(optimizer.learning_rate))  # a MirroredVariable too
  if not math.isclose(restored, value, rel_tol=1e-6):  # the variable is float32
    logging.info('%s=%g replaces the learning rate %g of the checkpoint', field, value, restored)
  optimizer.learning_rate = value


def exit_for_requeue(what: str) -> NoReturn:
  logging.warning('stopped early for preemption after saving %s; exit %d asks for a requeue',
                  what, EXIT_REQUEUE)
  sys.exit(EXIT_REQUEUE)


def check_finite(name: str, value: float, step: int, checkpoint_dir: str) -> None:
  if not math.isfinite(value):
    raise NonFiniteLossError(
        f'{name} is {value} at step {step}: training diverged. The last good checkpoint in '
        f'{checkpoint_dir} is intact; lower the learning rate (or rerun with --check_numerics '
        'to find the op) and rerun the same command to continue from it.')


class Checkpoints:
  """A stage's resume state: `model`, `optimizer` and the int64 `step` Variable, in
  STAGE/checkpoints/ (the newest 3 ckpt-N, and model.json naming the model they are of).

  `restore()` is what a start does: it removes what a save killed halfway left, refuses
  checkpoints of another model, restores the latest and sets the configured learning rate. The
  trainer counts `step` up; `save()` writes it as ckpt-<step>.
  """

  def __init__(self, stage_dir: str, model, optimizer, name: str, kwargs: dict[str, Any],
               section: str, dist=None):
    """`name` and `kwargs` identify the model (kwargs: those that shape its variables);
    `section` is its config's, named in errors and in the learning rate's field. Under a
    wm.distribute.Distribution `dist` (make the model and optimizer in its scope, this outside
    it: the step counter is a plain variable, the same on every worker) only the chief writes
    here; the other workers save their part elsewhere and delete it."""
    self.directory = os.path.join(stage_dir, 'checkpoints')
    self.optimizer, self.section, self.dist = optimizer, section, dist
    self.chief = dist is None or dist.chief
    self.identity = {'name': name, 'kwargs': kwargs}
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
    self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=3)
    self.saved_step = None  # the step of the latest checkpoint, once restored or saved

  def restore(self, learning_rate: float) -> int:
    """Restores the latest checkpoint, if any, at `learning_rate`; returns the step."""
    if self.chief:
      remove_dead_checkpoint_writes(self.directory)
    latest = self.manager.latest_checkpoint
    if latest:
      self._check_model()
      try:
        self.checkpoint.restore(latest).assert_existing_objects_matched()
      except (ValueError, AssertionError, tf.errors.OpError) as e:
        raise ConfigError(
            f'checkpoint {latest} does not fit {self.identity} ({str(e).splitlines()[0][:300]}); '
            f'{self._fix("it was")}') from None
      logging.info('resumed from %s at step %d', latest, int(self.step))
      self.saved_step = int(self.step)
    if self.chief:
      fileio.write_json(self._model_path(), self.identity)  # what the checkpoints are of from now
    apply_learning_rate(self.optimizer, learning_rate, f'{self.section}.learning_rate')
    return int(self.step)

  def save(self) -> None:
    """Saves ckpt-<step> (every worker calls it at the same step: saving may be collective)."""
    if self.chief:
      self.manager.save(checkpoint_number=int(self.step))
    else:
      self.dist.save_part(self.checkpoint, self.directory)
    self.saved_step = int(self.step)

  def save_unsaved(self) -> int:
    """Saves the step unless the latest checkpoint is of it; returns the step."""
    step = int(self.step)
    if self.saved_step != step:
      self.save()
    return step

  def save_and_exit(self, flush: Callable[[], Any]) -> NoReturn:
    """On preemption: saves, flushes the summaries and exits asking for a requeue."""
    step = self.save_unsaved()
    flush()
    exit_for_requeue(f'step {step} in {self.directory}')

  def resume_note(self) -> str:
    """What rerunning the stage does from here (for error messages)."""
    step = self.saved_step
    if not step:
      return 'rerun this command'
    return f'rerun this command: it continues from step {step} (the checkpoint in {self.directory})'

  def _model_path(self) -> str:
    return os.path.join(self.directory, 'model.json')

  def _check_model(self) -> None:
    """Refuses checkpoints whose model.json names another model (none: written before it)."""
    if os.path.exists(self._model_path()):
      found = fileio.read_json(self._model_path())
      if found != self.identity:
        raise ConfigError(f'the checkpoints in {self.directory} are of {found}, the config asks '
                          f'for {self.identity}; {self._fix("they were")}')

  def _fix(self, subject: str) -> str:
    return (f'use the {self.section}.* config {subject} trained with, or remove {self.directory} '
            'to start over')


def read_error(error: tf.errors.DataLossError, checkpoints: Checkpoints, run: runs.Run,
               source: str) -> DataError:
  """For a shard of stage `source` that failed to read: saves the steps trained since the last
  checkpoint, and returns the DataError that names the shard and its repair."""
  if int(checkpoints.step):
    checkpoints.save_unsaved()
  read = [run.split_dir(source, split) for split in runs.SPLITS
          if os.path.exists(os.path.join(run.split_dir(source, split), shard.MANIFEST))]
  return datasets.read_error(error, read, run.root, checkpoints.resume_note())


class Metrics:
  """A training stage's scalars, written to TensorBoard (STAGE/tb) and to STAGE/metrics.jsonl:
  one JSON line per logged step, `{"step": 500, "train/loss": ..., "valid/loss": ...}`, the same
  names and values, readable without TensorBoard (like the controller's history.jsonl).

  A line is written once a later step is logged, or on flush(). `resume(step)` drops the lines
  of steps after the checkpoint a rerun continues from: those steps are trained and logged again.
  """

  def __init__(self, stage_dir: str, enabled: bool = True):
    """`enabled=False` (a worker that is not the chief) writes nothing."""
    self.enabled = enabled
    self.writer = (tf.summary.create_file_writer(os.path.join(stage_dir, 'tb')) if enabled
                   else tf.summary.create_noop_writer())
    self.path = os.path.join(stage_dir, METRICS)
    self._row: dict[str, float] = {}

  def resume(self, step: int) -> None:
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [row for row in read_metrics(self.path) if row['step'] <= step]
    text = ''.join(json.dumps(row) + '\n' for row in kept)
    with open(self.path) as f:
      if f.read() != text:  # lines after `step`, or one cut short
        fileio.write_text(self.path, text)

  def scalars(self, values: dict[str, Any], step: int) -> None:
    """Writes `values` ({'train/loss': 0.5, ...}) at `step` to both."""
    values = {name: float(value) for name, value in values.items()}
    with self.writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)
    if self._row and self._row['step'] != step:
      self._append()
    self._row = {**self._row, 'step': step, **values}

  def flush(self) -> None:
    self._append()
    self.writer.flush()

  def _append(self) -> None:
    if self._row and self.enabled:
      with open(self.path, 'a') as f:
        f.write(json.dumps(self._row) + '\n')
      self._row = {}


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The lines of a metrics.jsonl ([] if there is none); a line cut short by a kill is skipped."""
  return [row for row in fileio.read_jsonl(path) if 'step' in row]
