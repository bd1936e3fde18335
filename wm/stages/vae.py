"""Stage 3's training loop: V on raw frames, resumable by rerun, preemptible, NaN-guarded.

    RUN/vae/checkpoints/   model, optimizer and step counter (wm.training.Checkpoints)
    RUN/vae/tb/            TensorBoard: train/{loss,recon,kl}, valid/{loss,recon,kl}, images
    RUN/vae/metrics.jsonl  the same scalars, a JSON line per logged step (wm.training.Metrics)
    RUN/vae/export/        the trained encoder (wm/models/export.py; load with kind='encoder')
    RUN/vae/DONE           written after the export

The loop is paced by clocks off one step counter: scalars every vae.log_every steps, a checkpoint
plus validation and reconstruction images every vae.save_every steps. Rerunning continues from the
latest checkpoint up to vae.train_steps (raise it to train longer); once finished and exported,
a rerun does nothing. A shard that fails to read stops the run with a DataError naming it (by the
manifest's sha256), after saving the steps trained so far.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf
from absl import logging

from wm import datasets, distribute, hardware, training
from wm.config import Config
from wm.errors import DataError
from wm.infra import cli
from wm.infra.progress import Progress
from wm.models import export, registry
from wm.stages import shard

NUM_IMAGES = 4  # frames shown beside their reconstructions in TensorBoard
# Encoder arguments a resumed V may change: they shape no variable. The checkpoints record the
# others (wm.training.Checkpoints) and refuse a config that changes them.
RESUMABLE = ('kl_tolerance', 'mixed_precision')


def model_kwargs(config: Config) -> dict[str, Any]:
  """The encoder's constructor arguments (plain JSON values: the export stores them)."""
  return registry.encoder_class(config.vae.model).kwargs_from_config(config)


def build_model(config: Config) -> tf.keras.Model:
  model = registry.encoder_class(config.vae.model)(**model_kwargs(config))
  model.build_for_loading()
  return model


def make_train_step(model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer,
                    dist: distribute.Distribution, global_batch: int, seed: int):
  """One optimizer step on a global batch of uint8 frames, on every replica of `dist`:
  step(frames, step, stop) -> {loss, recon, kl: the global batch's means, stop: > 0 when any
  worker asked to stop}. The latent noise of row i of step s is row i of a draw seeded by
  (seed, s) for the global batch, so any number of replicas takes the same step."""

  def replica_step(frames: tf.Tensor, step: tf.Tensor, stop: tf.Tensor) -> dict[str, tf.Tensor]:
    local = tf.shape(frames)[0]
    first = distribute.replica_first_row(local)
    noise = tf.random.stateless_normal([global_batch, model.z_size],
                                       tf.stack([tf.constant(seed, tf.int64), step]))
    share = distribute.replica_share(local)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
      out = model.losses_for(frames, noise=noise[first:first + local])
      loss = out['loss'] * share
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return {'loss': loss, 'recon': out['recon'] * share, 'kl': out['kl'] * share, 'stop': stop}

  return dist.step(replica_step)


class Trainer:
  """Owns the model, optimizer, checkpoints and summaries of one stage run."""

  def __init__(self, stage: cli.Stage, dist: distribute.Distribution):
    self.stage, self.config, self.dist = stage, stage.config, dist
    self.export_dir = os.path.join(stage.dir, 'export')
    dist.check_batch(self.config.data.batch_size, 'data.batch_size')
    tf.keras.utils.set_random_seed(self.config.seed)  # V's initial weights: the same every run
    with dist.scope():
      self.model = build_model(self.config)
      self.optimizer = tf.keras.optimizers.Adam(self.config.vae.learning_rate)
      self.optimizer.build(self.model.trainable_variables)
    shape = {k: v for k, v in model_kwargs(self.config).items() if k not in RESUMABLE}
    self.checkpoints = training.Checkpoints(stage.dir, self.model, self.optimizer,
                                            self.config.vae.model, shape, 'vae', dist)
    self.train_step = make_train_step(self.model, self.optimizer, dist,
                                      self.config.data.batch_size, self.config.seed)
    self.metrics = None  # training.Metrics, once there is training to do
    self.valid_data = None

  # ------------------------------------------------------------------------ steps

  @tf.function
  def eval_step(self, frames: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    return self.model.losses_for(frames, seed=seed)

  # ------------------------------------------------------------------------ data

  def split_paths(self, split: str) -> list[str] | None:
    split_dir = self.stage.run.split_dir('shard', split)
    if split == 'valid' and not os.path.exists(os.path.join(split_dir, shard.MANIFEST)):
      return None  # records.valid_fraction = 0: no validation split
    return shard.shard_paths(split_dir)

  def frames(self, paths: list[str], seed: int,
             shard: distribute.InputShard | None = None) -> tf.data.Dataset:
    """Batches of frames: global batches, or `shard`'s per-replica batches."""
    data = self.config.data
    shard = shard or distribute.InputShard(0, 1, data.batch_size)
    return datasets.raw_frames(paths, data.obs_sampled_per_rollout, data.shuffle_buffer,
                               shard.batch_size, seed=seed, shard=shard)

  def train_batches(self, paths: list[str], seed: int):
    """The training batches, split over the replicas (each worker reads its part)."""
    return self.dist.datasets(lambda shard: self.frames(paths, seed, shard),
                              self.config.data.batch_size, 'data.batch_size')

  def check_frames(self, batch, paths: list[str]) -> None:
    batch = self.dist.strategy.experimental_local_results(batch)[0]
    want = (self.config.data.batch_size // self.dist.replicas, *self.model.frame_shape)
    if tuple(batch.shape) != want or batch.dtype != tf.uint8:
      raise DataError(f'frames in {os.path.dirname(paths[0])} are {batch.dtype.name} '
                      f'{tuple(batch.shape[1:])}; the encoder expects uint8 {want[1:]} '
                      f'(env.frame_size={self.config.env.frame_size}); reshard the data or fix '
                      '--config.env.frame_size')

  # ------------------------------------------------------------------------ summaries

  def log_scalars(self, family: str, metrics: dict[str, Any], step: int) -> None:
    self.metrics.scalars({f'{family}/{key}': value for key, value in metrics.items()}, step)

  def validate(self, step: int) -> dict[str, float] | None:
    if self.valid_data is None:
      return None
    totals, count, images = {}, 0, None
    for i, frames in enumerate(self.valid_data):
      out = self.eval_step(frames, tf.constant([self.config.seed, i], tf.int64))
      for key in ('loss', 'recon', 'kl'):
        totals[key] = totals.get(key, 0.0) + float(out[key])
      count += 1
      if images is None:
        originals = tf.cast(frames[:NUM_IMAGES], tf.float32) / 255.0
        images = tf.concat([originals, out['reconstruction'][:NUM_IMAGES]], axis=2)
    metrics = {k: v / count for k, v in totals.items()}
    self.log_scalars('valid', metrics, step)
    with self.metrics.writer.as_default(step=step):
      tf.summary.image('valid/frame_and_reconstruction', images, max_outputs=NUM_IMAGES)
    logging.info('step %d: valid/loss %.3f (recon %.3f, kl %.3f)', step, metrics['loss'],
                 metrics['recon'], metrics['kl'])
    return metrics

  # ------------------------------------------------------------------------ the loop

  def train(self) -> dict[str, Any] | None:
    """Trains (or resumes, or tops up) V to vae.train_steps and exports it; returns DONE's
    info, or None when V was already trained that far and exported."""
    vae, run = self.config.vae, self.stage.run
    with training.Preemption() as preemption:
      start = self.checkpoints.restore(vae.learning_rate)
      if start >= vae.train_steps and self.exported(start):
        logging.info('V is trained to step %d (vae.train_steps=%d) and exported in %s: nothing '
                     'to do; raise vae.train_steps to train longer', start, vae.train_steps,
                     self.export_dir)
        return None
      # The data first: a refusal (shards missing or removed) leaves a finished V finished.
      train_paths, valid_paths = self.split_paths('train'), self.split_paths('valid')
      if self.dist.chief:
        run.clear_done('vae')
      self.metrics = training.Metrics(self.stage.dir, enabled=self.dist.chief)
      self.metrics.resume(start)
      train_dir = run.split_dir('shard', 'train')
      self.dist.check_rollouts(shard.read_manifest(train_dir)['num_rollouts'], train_dir)
      if valid_paths and self.dist.chief:  # validation is the chief's, computed once
        self.valid_data = self.frames(valid_paths, self.config.seed).take(
            vae.valid_batches).cache()
      try:
        if start < vae.train_steps:
          with self.dist.workers_alive(self.checkpoints.resume_note):
            self.loop(start, train_paths, preemption)
        valid = self.validate(int(self.checkpoints.step))
      except tf.errors.DataLossError as e:  # a shard is corrupted: inflate() or a CRC failed
        raise training.read_error(e, self.checkpoints, run, 'shard') from None
      self.metrics.flush()
      if not self.dist.chief:
        return None
      return {**self.export(), **({'valid': valid} if valid else {})}

  def loop(self, start: int, paths: list[str], preemption: training.Preemption) -> None:
    vae = self.config.vae
    log_every, save_every = training.Every(vae.log_every), training.Every(vae.save_every)
    batches = iter(self.train_batches(paths, seed=datasets.stream_seed(self.config.seed, start)))
    progress = Progress('vae train steps', vae.train_steps,
                        folder=self.stage.dir if self.dist.chief else None)
    step = start
    while step < vae.train_steps:
      frames = next(batches)
      if step == start:
        self.check_frames(frames, paths)
      metrics = self.train_step(frames, tf.constant(step, tf.int64),
                                tf.constant(float(preemption.requested)))
      self.checkpoints.step.assign_add(1)
      step = int(self.checkpoints.step)
      if float(metrics.pop('stop')) > 0:  # every worker stops after this same step
        self.checkpoints.save_and_exit(self.metrics.flush)
      training.check_finite('train/loss', float(metrics['loss']), step,
                            self.checkpoints.directory)
      if log_every(step):
        self.log_scalars('train', metrics, step)
      if save_every(step) or step == vae.train_steps:
        self.checkpoints.save()
        if step < vae.train_steps:
          self.validate(step)
      progress.update(step, images=(step - start) * self.config.data.batch_size)

  def exported(self, step: int) -> bool:
    """Whether DONE stands and the export is of `step`."""
    if not self.stage.run.is_done('vae'):
      return False
    try:
      return export.read_info(self.export_dir).get('step') == step
    except DataError:
      return False

  def export(self) -> dict[str, Any]:
    step = int(self.checkpoints.step)
    export.save(self.model, self.export_dir, kind='encoder', name=self.config.vae.model,
                kwargs=model_kwargs(self.config), step=step)
    logging.info('exported the encoder at step %d to %s', step, self.export_dir)
    return {'step': step, 'export': self.export_dir}


def train(stage: cli.Stage, dist: distribute.Distribution | None = None) -> dict[str, Any] | None:
  """Trains V (under `dist`, by default the config's); returns DONE's info, None if there was
  nothing to do or this worker is not the chief (see Trainer.train)."""
  return Trainer(stage, dist or distribute.create(stage.config.distribute)).train()


def run(stage: cli.Stage, check_numerics: bool = False, run_eagerly: bool = False) -> None:
  """The stage: train (or resume, or top up) V, export it, then DONE."""
  dist = distribute.create(stage.config.distribute)  # before any other TensorFlow op
  if check_numerics:
    tf.debugging.enable_check_numerics()
  if run_eagerly:
    tf.config.run_functions_eagerly(True)
  device = distribute.record(stage, dist, hardware.describe(stage.config.vae.precision))
  info = train(stage, dist)
  if info is not None:
    stage.run.mark_done('vae', **info, device=device)
