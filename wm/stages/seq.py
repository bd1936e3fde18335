"""Stage 5's training loop: M on encoded rollouts, resumable, preemptible, NaN-guarded.

One step counter paces everything (wm.training.Every clocks): scalars every seq.log_every steps
(TensorBoard in RUN/seq/tb and a line each in RUN/seq/metrics.jsonl: wm.training.Metrics),
validation every seq.valid_every, a checkpoint (model, optimizer, step: wm.training.Checkpoints)
every seq.save_every and on preemption. Rerunning the same command restores the latest checkpoint
and continues up to seq.train_steps (at the configured seq.learning_rate); raising
seq.train_steps tops a finished run up. At the end the model is exported (wm/models/export.py)
with the distribution of first latents the dream starts from. A shard that fails to read stops
the run with a DataError naming it (by the manifest's sha256), after saving the steps trained so
far. With seq.judges the stage then trains that many more Ms the same way, each with another seed
(and seq.judge_hidden_size), into RUN/seq/judges/<i>: the controller's dream lets each play its
share of the episodes (wm/dream.py), so a move only one M lets live does not pay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from wm import artifacts, distribute, hardware, sequences, training
from wm.config import SeqConfig
from wm.errors import ConfigError, DataError, UserError
from wm.infra import cli, fileio, workers
from wm.infra.progress import Progress
from wm.infra.runs import Run
from wm.models import export, mdn, registry
from wm.stages import shard

TERMS = ('loss', 'latent_nll', 'reward_nll', 'done_nll')


def read_split(run: Run, split: str) -> tuple[list[str], dict[str, Any]]:
  """Shard paths and manifest of RUN/encoded/<split>, checked to be encoded rollouts."""
  folder = run.split_dir('encode', split)
  manifest = shard.read_manifest(folder)
  if manifest.get('format') != sequences.FORMAT:
    raise DataError(f'{folder}/{shard.MANIFEST} has format {manifest.get("format")!r}, '
                    f'expected {sequences.FORMAT!r}: point the encode stage at this folder, '
                    'or rerun scripts/encode_rollouts.py')
  return shard.shard_paths(folder), manifest


def model_kwargs(seq: SeqConfig, z_size: int, action_size: int) -> dict[str, Any]:
  """The constructor arguments of the configured model (JSON, saved with the export)."""
  return registry.sequence_model_class(seq.model).kwargs_from_config(seq, z_size, action_size)


class Trainer:
  """Adam on the summed mdn.losses terms, with global-norm gradient clipping.

  A step differentiates M in two parts. The mixture likelihood and the other terms, from the
  head's dense outputs, are one XLA-compiled function that returns the terms and their gradient:
  compiled, its elementwise arithmetic runs as a few fused loops instead of dozens of
  whole-tensor ops. The tape then carries that gradient back through the dense layer and the
  body (LSTM or transformer). With `precision` bfloat16 (seq.precision, resolved) the head's
  product and the body's that can (the fused LSTM's outside its loops) run in bfloat16; the loss,
  the weights and the optimizer stay float32. scripts/benchmark_seq.py measures the step.
  """

  def __init__(self, model, learning_rate: float, grad_clip: float = 0.0,
               dist: distribute.Distribution | None = None, done_weight: float = 1.0,
               dropout: float = 0.0, precision: str = 'float32', padded_length: int = 0):
    """Under `dist` (default: one device), make the model and this in dist.scope().
    `dropout` (seq.dropout) drops that share of the features the head reads, while training.
    `padded_length` (seq.sequence_length, given with seq.bucket_steps): batches are cut short
    of it, and each step's gradient, a mean over the batch's real steps, is weighted by the
    batch's fill (its real steps over batch x padded_length), so a real step weighs about the
    same in every batch. Unweighted, a batch of short windows would weigh each of its steps
    several times more than a batch of long ones: the short episodes and their deaths would
    count more than in padded batches, where every batch holds a mix of lengths. (Adam does not
    see the weights' common scale, only how they differ between batches.)"""
    self.model = model
    self.grad_clip, self.done_weight, self.dropout = grad_clip, done_weight, dropout
    self.padded_length = padded_length
    self.precision = precision
    self.dist = dist or distribute.one_device()
    self.optimizer = tf.keras.optimizers.Adam(learning_rate)
    model.build_for_loading()
    self.optimizer.build(model.trainable_variables)
    self.loss_step = tf.function(self._loss_step, jit_compile=True)
    # train_step(batch, stop) -> the global batch's terms, and `stop` summed over the workers
    self.train_step = self.dist.step(self._train_step)
    self.eval_step = tf.function(self._terms, reduce_retracing=True)

  def _terms(self, batch: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
    prediction = self.model.predict_sequence(batch['z'], batch['actions'], training=training)
    return mdn.losses(prediction, batch['z_next'], batch['reward'], batch['done'], batch['mask'],
                      self.done_weight)

  def _loss_step(self, outputs: tf.Tensor, targets: dict[str, tf.Tensor]):
    """The head's dense outputs [B, T, D] -> (terms, d loss / d outputs)."""
    with tf.GradientTape() as tape:
      tape.watch(outputs)
      terms = mdn.losses(self.model.head.unpack(outputs), targets['z_next'], targets['reward'],
                         targets['done'], targets['mask'], self.done_weight)
    return terms, tape.gradient(terms['loss'], outputs)

  def gradients(self, batch: dict[str, tf.Tensor], share: tf.Tensor | float = 1.0):
    """(terms, gradients, variables) of the loss on one batch, scaled by `share`: this
    replica's part of the global batch's mask-weighted mean."""
    with tf.GradientTape() as tape:
      features = self.model.sequence_features(batch['z'], batch['actions'], training=True,
                                              precision=self.precision,
                                              resets=batch.get('reset'))
      if self.dropout:
        features = tf.nn.dropout(features, self.dropout)
      outputs = self.model.head.outputs(features, self.precision)
    targets = {key: batch[key] for key in ('z_next', 'reward', 'done', 'mask')}
    terms, d_outputs = self.loss_step(outputs, targets)
    variables = self.model.trainable_variables
    grads = tape.gradient(outputs, variables, output_gradients=d_outputs * share)
    return {key: value * share for key, value in terms.items()}, grads, variables

  def step_gradients(self, batch: dict[str, tf.Tensor]):
    """(terms, gradients, variables) of this replica's part of a training step: the gradients
    clipped (seq.grad_clip) and, with padded_length, weighted by the global batch's fill."""
    count = tf.reduce_sum(tf.cast(batch['mask'], tf.float32))
    total = distribute.replica_sum(count)  # the global batch's real steps
    terms, grads, variables = self.gradients(batch, distribute.replica_share(count, total))
    if self.grad_clip > 0:
      grads = self.clip(grads)
    if self.padded_length:  # after clipping, which would undo a weight given before it
      slots = tf.shape(batch['mask'])[0] * self.dist.replicas * self.padded_length
      grads = [g * (total / tf.cast(slots, tf.float32)) for g in grads]
    return terms, grads, variables

  def _train_step(self, batch: dict[str, tf.Tensor], stop: tf.Tensor | float = 0.0
                  ) -> dict[str, tf.Tensor]:
    """One replica's part of a step (all of it on one device)."""
    terms, grads, variables = self.step_gradients(batch)
    self.optimizer.apply_gradients(zip(grads, variables))
    return {**terms, 'stop': stop}

  def clip(self, grads: list[tf.Tensor]) -> list[tf.Tensor]:
    """Clips the global batch's gradient to seq.grad_clip. With several replicas that needs
    their sum first; the optimizer sums again, so each replica then hands it 1/R of the
    clipped sum."""
    replicas = self.dist.replicas
    if replicas > 1:
      grads = tf.distribute.get_replica_context().all_reduce(distribute.SUM, grads)
    grads, _ = tf.clip_by_global_norm(grads, self.grad_clip)
    return grads if replicas == 1 else [g / replicas for g in grads]

  def evaluate(self, data: tf.data.Dataset, max_batches: int) -> dict[str, float]:
    """Mask-weighted means of the terms over at most `max_batches` batches."""
    sums, count = dict.fromkeys(TERMS, 0.0), 0.0
    for batch in data.take(max_batches):
      weight = float(tf.reduce_sum(batch['mask']))
      for key, value in self.eval_step(batch).items():
        sums[key] += float(value) * weight
      count += weight
    return {key: value / max(count, 1.0) for key, value in sums.items()}


def write_scalars(metrics: training.Metrics, family: str, terms: dict[str, float],
                  step: int) -> None:
  metrics.scalars({f'{family}/{key}': value for key, value in terms.items()}, step)


def save_initial_latents(paths: list[str], path: str) -> int:
  """RUN/seq/initial_latents.npz: mu, logvar [N, Z] of each training rollout's first frame."""
  first = sequences.first_latents(paths)
  with fileio.atomic_path(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **first)
  return len(first['mu'])


def batch_steps(batch: dict[str, Any], batch_size: int) -> int:
  """The steps a training batch computes, padding included: batch_size x its length (shorter
  than seq.sequence_length with seq.bucket_steps; under a strategy, this worker's longest)."""
  mask = batch['mask']
  return batch_size * max(int(part.shape[1]) for part in getattr(mask, 'values', (mask,)))


def fit(trainer: Trainer, checkpoints: training.Checkpoints, batches, seq: SeqConfig, evaluate,
        preemption: training.Preemption, metrics: training.Metrics) -> None:
  """Steps from checkpoints.step up to seq.train_steps, paced by seq's clocks, writing scalars
  to `metrics`; ends with a checkpoint. `evaluate()` writes and returns the valid terms (the
  caller validates the last step, once).
  """
  clocks = {name: training.Every(getattr(seq, name + '_every'))
            for name in ('log', 'valid', 'save')}
  step = int(checkpoints.step)
  progress = Progress('seq', seq.train_steps,
                      folder=os.path.dirname(checkpoints.directory) if checkpoints.chief else None)
  start = time.perf_counter()
  sequence_steps = 0
  while step < seq.train_steps:
    batch = next(batches)
    terms = trainer.train_step(batch, tf.constant(float(preemption.requested)))
    checkpoints.step.assign_add(1)
    step = int(checkpoints.step)
    stop = float(terms.pop('stop')) > 0  # every worker stops after this same step
    training.check_finite('train/loss', float(terms['loss']), step, checkpoints.directory)
    sequence_steps += batch_steps(batch, seq.batch_size)
    if clocks['log'](step) or step == seq.train_steps:
      rate = sequence_steps / (time.perf_counter() - start)
      write_scalars(metrics, 'train', {**terms, 'sequence_steps_per_s': rate}, step)
    if clocks['save'](step):  # before validating: a failure there keeps the steps trained
      checkpoints.save()
    if clocks['valid'](step) and step < seq.train_steps:  # the last step's is the final one
      evaluate()
    if stop:
      checkpoints.save_and_exit(metrics.flush)
    progress.update(step, sequence_steps=sequence_steps)
  checkpoints.save_unsaved()


def fit_and_validate(stage: cli.Stage, trainer: Trainer, checkpoints: training.Checkpoints,
                     train_paths: list[str], valid_paths: list[str],
                     resample: bool = False) -> dict[str, float]:
  """Trains to seq.train_steps with summaries in STAGE/tb and STAGE/metrics.jsonl, on the
  training rollouts or, `resample`, on a bootstrap resample of them seeded by the stage's seed;
  returns the final valid terms."""
  seq, seed, dist = stage.config.seq, stage.config.seed, trainer.dist
  if resample:
    logging.info('seq: learning from a bootstrap resample of the training rollouts (seed %d)',
                 seed)
  train_data = dist.datasets(
      lambda part: sequences.train_batches(
          train_paths, seq.sequence_length, part.batch_size, seq.shuffle_buffer, seed=seed,
          shard=part, from_start=seq.window_start == 'episode',
          start_step=int(checkpoints.step), bucket_steps=seq.bucket_steps,
          resample_seed=seed if resample else None, pack=seq.pack),
      seq.batch_size, 'seq.batch_size')
  valid_paths = valid_paths if dist.chief else []  # validation is the chief's, computed once
  valid_data = valid_paths and sequences.valid_batches(valid_paths, seq.sequence_length,
                                                       seq.batch_size, seed=seed)
  metrics = training.Metrics(stage.dir, enabled=dist.chief)
  metrics.resume(int(checkpoints.step))

  def evaluate() -> dict[str, float]:
    terms = trainer.evaluate(valid_data, seq.valid_batches) if valid_paths else {}
    write_scalars(metrics, 'valid', terms, int(checkpoints.step))
    return terms

  with training.Preemption() as preemption, dist.workers_alive(checkpoints.resume_note):
    fit(trainer, checkpoints, iter(train_data), seq, evaluate, preemption, metrics)
    final = evaluate()
  metrics.flush()
  return final


def train(stage: cli.Stage, dist: distribute.Distribution | None = None,
          as_judge: bool = False) -> dict[str, Any] | None:
  """Trains (or resumes, or tops up) M to seq.train_steps under `dist` (by default the
  config's) and exports it, with the first latents dreams start from unless M is trained
  `as_judge` (dreams start from the run's own; with seq.judge_data=bootstrap a judge learns from
  its own resample of the rollouts); returns DONE's info (None on a worker that is not the
  chief)."""
  seq, run = stage.config.seq, stage.run
  dist = dist or distribute.create(stage.config.distribute)
  train_paths, manifest = read_split(run, 'train')
  has_valid = os.path.exists(os.path.join(run.split_dir('encode', 'valid'), shard.MANIFEST))
  valid_paths = read_split(run, 'valid')[0] if has_valid else []
  kwargs = model_kwargs(seq, int(manifest['z_size']), int(manifest['action_size']))
  dist.check_batch(seq.batch_size, 'seq.batch_size')
  dist.check_rollouts(int(manifest['num_rollouts']), run.split_dir('encode', 'train'))
  tf.keras.utils.set_random_seed(stage.config.seed)  # M's initial weights: the same every run
  with dist.scope():
    model = registry.sequence_model_class(seq.model)(**kwargs)
    trainer = Trainer(model, seq.learning_rate, seq.grad_clip, dist, seq.done_weight, seq.dropout,
                      hardware.precision(seq.precision),
                      padded_length=seq.sequence_length if seq.bucket_steps else 0)
  checkpoints = training.Checkpoints(stage.dir, model, trainer.optimizer, seq.model, kwargs,
                                     'seq', dist)
  checkpoints.restore(seq.learning_rate)
  if dist.chief:
    run.clear_done('seq')  # only once the inputs and checkpoints are known to fit
  try:
    final = fit_and_validate(stage, trainer, checkpoints, train_paths, valid_paths,
                             resample=as_judge and seq.judge_data == 'bootstrap')
    step = int(checkpoints.step)
    if not dist.chief:
      return None
    export.save(model, os.path.join(stage.dir, 'export'), 'sequence_model', seq.model, kwargs,
                step=step, valid=final)
    count = 0
    if not as_judge:
      count = save_initial_latents(train_paths, os.path.join(stage.dir, 'initial_latents.npz'))
  except tf.errors.DataLossError as e:  # a shard is corrupted: inflate() or a CRC failed
    raise training.read_error(e, checkpoints, run, 'encode') from None
  logging.info('seq: step %d, valid %s, %d initial latents', step, final, count)
  return {'step': step, 'valid': final, 'model': seq.model}


def judge_stage(stage: cli.Stage, index: int) -> cli.Stage:
  """The stage as judge `index` (1, 2, ...) of seq.judges trains: with seed seed+index and
  seq.judge_hidden_size, on the same latents, into RUN/seq/judges/<index>."""
  config, seq = stage.config, stage.config.seq
  judge_seq = dataclasses.replace(seq, judges=0, hidden_size=seq.judge_hidden_size or seq.hidden_size)
  return dataclasses.replace(
      stage, config=dataclasses.replace(config, seed=config.seed + index, seq=judge_seq),
      run=artifacts.seq_judge_run(stage.run, index))


def run(stage: cli.Stage, parallelism: int = 1, judge: int = 0) -> None:
  """The stage: train (or resume, or top up) M, export it, then its judges (seq.judges), each
  with a DONE of its own; then M's DONE (the chief's). With `parallelism` > 1 M and all its
  judges train at once, M here and each judge in a child process running this stage with
  --judge (JudgeProcesses), the cores split evenly between them (one thread each at least: three
  on 2 cores share them, where waves of two left a core idle in the last). `judge` in 1 ..
  seq.judges (the script refuses others) trains that judge alone (the child's work, or a job of
  its own), on 1/`parallelism` of the cores."""
  seq = stage.config.seq
  at_once = 1 if judge or parallelism <= 1 else 1 + seq.judges
  share_cores(parallelism if judge else at_once)
  dist = distribute.create(stage.config.distribute)  # before any other TensorFlow op
  if dist.workers > 1 and (judge or at_once > 1):
    raise ConfigError(f'{dist.workers} workers train M together: judges then train after M in '
                      'the same workers, so drop --judge and --parallelism (or run the judges as '
                      'jobs of one worker each with --judge=<i>)')
  device = distribute.record(stage, dist, hardware.describe(seq.precision))
  if judge:
    folder = judge_stage(stage, judge).dir
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with fileio.claim(folder) as held:
      if not held:
        raise UserError(f'judge {judge} is being trained by another process (host and pid: '
                        f'{fileio.claim_holder(folder)}): wait for it')
      train_judge(stage, judge, dist, device)
    return
  indices = range(1, seq.judges + 1)
  with JudgeProcesses(stage, indices if at_once > 1 else ()) as children:
    info = train(stage, dist)  # clears M's DONE first: an unfinished judge leaves it undone
    children.finish()
    for index in indices if at_once == 1 else ():
      train_judge(stage, index, dist, device, wait=dist.workers == 1)
  if info is not None:
    judges = [fileio.read_json(judge_stage(stage, i).run.done_path('seq'))['valid']
              for i in indices]
    stage.run.mark_done('seq', **info, **({'judges_valid': judges} if judges else {}),
                        device=device)


def share_cores(processes: int) -> None:
  """Gives this process's TensorFlow 1/`processes` of the cores it may run on (at least one),
  so that that many trainings side by side do not fight over them: two Ms on one core each
  train 1.5x as fast together as one after the other on both (docs/benchmarks.md)."""
  if processes > 1:
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    logging.info('seq: %d trainings side by side, %d thread(s) each', processes, threads)


def train_judge(stage: cli.Stage, index: int, dist: distribute.Distribution,
                device: dict[str, Any], wait: bool = False) -> None:
  """Trains (or resumes) judge `index` and marks its DONE. Another process training it (its
  claim on the folder held) is refused, or with `wait` waited for, then resumed here: the
  claim is a lease, so a holder that died frees it (wm/infra/fileio.py)."""
  judge = judge_stage(stage, index)
  logging.info('seq: judge %d of %d (seed %d, hidden_size %d) in %s', index,
               stage.config.seq.judges, judge.config.seed, judge.config.seq.hidden_size,
               judge.dir)
  os.makedirs(os.path.dirname(judge.dir), exist_ok=True)
  while True:
    with fileio.claim(judge.dir) if wait else contextlib.nullcontext(True) as held:
      if held:
        # checked by the script already; again here, where another job may have trained it
        artifacts.require_judge_data(judge.run, judge.config.seq.judge_data)
        if judge_finished(judge):
          logging.info('seq: judge %d is trained already (%s)', index, judge.run.done_path('seq'))
          return
        record_judge_data(judge)
        judged = train(judge, dist, as_judge=True)
        if judged is not None:
          judge.run.mark_done('seq', **judged, seed=judge.config.seed,
                              data=judge.config.seq.judge_data, device=device)
        return
    logging.info('seq: judge %d is being trained by %s; waiting for it', index,
                 fileio.claim_holder(judge.dir))
    time.sleep(JUDGE_POLL_S)


def judge_finished(judge: cli.Stage) -> bool:
  """Whether the judge's DONE and export are this config's model trained to seq.train_steps
  (on seq.judge_data: artifacts.require_judge_data): a judge trained by another process
  (--judge) is then used as it is, not exported again (which would change M's fingerprint under
  a controller searched with it)."""
  if not judge.run.is_done('seq'):
    return False
  try:
    info = fileio.read_json(os.path.join(judge.dir, 'export', 'model.json'))
  except (OSError, ValueError):
    return False
  manifest = read_split(judge.run, 'train')[1]
  kwargs = model_kwargs(judge.config.seq, int(manifest['z_size']), int(manifest['action_size']))
  return (info.get('name'), info.get('kwargs'), info.get('step')) == (
      judge.config.seq.model, kwargs, judge.config.seq.train_steps)


def record_judge_data(judge: cli.Stage) -> None:
  """Records what the judge learns from (seq.judge_data, in artifacts.JUDGE_DATA) as its
  training starts, so that it is not resumed later on other data (require_judge_data)."""
  path = os.path.join(judge.dir, artifacts.JUDGE_DATA)
  if not os.path.exists(path):
    os.makedirs(judge.dir, exist_ok=True)
    fileio.write_json(path, {'data': judge.config.seq.judge_data})


JUDGE_POLL_S = 10.0  # how often a stage waiting for a judge trained elsewhere looks again
STOP_GRACE_S = 120.0  # a judge's child process told to stop saves within this, or is killed
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), 'scripts', 'train_sequence_model.py')


class JudgeProcesses:
  """Judges trained side by side with M: each by a child process running this stage's script
  with --judge=<index> and the same --config and overrides, its output appended to
  RUN/logs/seq-judge<index>.log, all started with M, each on an equal share of the cores; once M
  is trained, `finish` waits for them. A child dies with this process (SIGTERM from the kernel,
  whatever killed this one); leaving the `with` block early tells the children to save and stop,
  and kills any still running STOP_GRACE_S later.
  """

  def __init__(self, stage: cli.Stage, indices):
    self.stage = stage
    self.indices = list(indices)
    self.running: dict[int, subprocess.Popen] = {}
    self.codes: dict[int, int] = {}
    self._stopped = threading.Event()

  def __enter__(self) -> 'JudgeProcesses':
    self._start()
    if self.running:
      threading.Thread(target=self._watch, daemon=True).start()
    return self

  def _watch(self) -> None:
    """While M trains: says at once when a judge's process fails (the stage fails after M)."""
    told = set()
    while not self._stopped.wait(2.0):
      for index, child in list(self.running.items()):
        code = child.poll()
        if code not in (None, 0, training.EXIT_REQUEUE) and index not in told:
          told.add(index)
          logging.error('seq: judge %d failed (exit status %d; its log: %s); M trains on, and '
                        'the stage fails once M is done', index, code, self.log_path(index))

  def __exit__(self, *exc) -> None:
    self._stopped.set()
    for child in self.running.values():
      child.terminate()  # SIGTERM: its training saves and exits 75
    deadline = time.monotonic() + STOP_GRACE_S
    for child in self.running.values():
      try:
        child.wait(max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        child.kill()
        child.wait()

  def argv(self, index: int) -> list[str]:
    """The child's command: this stage's flags, as judge `index` of M and its judges, all at
    once."""
    argv = [sys.executable, SCRIPT, f'--run_dir={self.stage.run.root}', f'--judge={index}',
            f'--parallelism={1 + len(self.indices)}', '--nostore_snapshot']
    if cli.FLAGS['config'].present:
      argv.append(f'--config={cli.FLAGS.config}')
    return argv + [f'--config.{k}={v}' for k, v in self.stage.overrides.items()]

  def log_path(self, index: int) -> str:
    return os.path.join(self.stage.run.root, 'logs', f'seq-judge{index}.log')

  def _start(self) -> None:
    for index in self.indices:
      path = self.log_path(index)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'ab') as log:
        log.write(f'== {time.strftime("%F %T")} {" ".join(self.argv(index))}\n'.encode())
        log.flush()
        self.running[index] = subprocess.Popen(self.argv(index), stdout=log,
                                               stderr=subprocess.STDOUT,
                                               preexec_fn=workers.end_with_parent)
      logging.info('seq: judge %d trains beside M in process %d (its log: %s)', index,
                   self.running[index].pid, path)

  def finish(self) -> None:
    """Waits for every judge; a child stopped for preemption stops this process the same way,
    one that failed is an error quoting its log."""
    self._stopped.set()  # the watcher's work is this loop's now
    with training.Preemption() as preemption:
      while self.running:
        for index, child in list(self.running.items()):
          if child.poll() is not None:
            self.codes[index] = self.running.pop(index).returncode
        if preemption.requested:
          self.__exit__()
          self.running.clear()
          training.exit_for_requeue('M; the judges saved their own checkpoints')
        time.sleep(0.5)
    stopped = sorted(i for i, code in self.codes.items() if code == training.EXIT_REQUEUE)
    if stopped:
      training.exit_for_requeue(f'M; judge(s) {stopped} were stopped and saved')
    for index, code in sorted(self.codes.items()):
      if code:
        raise UserError(f'judge {index} failed (exit status {code}) in its own process; the '
                        f'end of its log {self.log_path(index)}:\n{_tail(self.log_path(index))}'
                        '\nM is trained and kept: fix that, then rerun the same command')


def _tail(path: str, lines: int = 8) -> str:
  with open(path, 'rb') as f:
    return b''.join(f.readlines()[-lines:]).decode(errors='replace').rstrip()
