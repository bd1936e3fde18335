"""Stage 3's training loop: V on raw frames, resumable by rerun, preemptible, NaN-guarded.

    RUN/vae/checkpoints/   tf.train.CheckpointManager (model, optimizer, step counter)
    RUN/vae/tb/            TensorBoard: train/{loss,recon,kl}, valid/{loss,recon,kl}, images
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

from wm import datasets, training
from wm.config import Config
from wm.errors import ConfigError, DataError
from wm.infra import cli, runs
from wm.infra.progress import Progress
from wm.models import export, registry
from wm.stages import shard

NUM_IMAGES = 4  # frames shown beside their reconstructions in TensorBoard


def model_kwargs(config: Config) -> dict[str, Any]:
  """The encoder's constructor arguments (plain JSON values: the export stores them)."""
  return registry.encoder_class(config.vae.model).kwargs_from_config(config)


def build_model(config: Config) -> tf.keras.Model:
  model = registry.encoder_class(config.vae.model)(**model_kwargs(config))
  model.build_for_loading()
  return model


def make_train_step(model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer,
                    step: tf.Variable):
  """One optimizer step on a batch of uint8 frames, as a tf.function; counts `step` up."""

  @tf.function
  def train_step(frames: tf.Tensor) -> dict[str, tf.Tensor]:
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
      out = model.losses_for(frames)
    grads = tape.gradient(out['loss'], variables)
    optimizer.apply_gradients(zip(grads, variables))
    step.assign_add(1)
    return {k: out[k] for k in ('loss', 'recon', 'kl')}

  return train_step


class Trainer:
  """Owns the model, optimizer, checkpoint and summaries of one stage run."""

  def __init__(self, stage: cli.Stage):
    self.stage, self.config = stage, stage.config
    self.ckpt_dir = os.path.join(stage.dir, 'checkpoints')
    self.export_dir = os.path.join(stage.dir, 'export')
    self.model = build_model(self.config)
    self.optimizer = tf.keras.optimizers.Adam(self.config.vae.learning_rate)
    self.optimizer.build(self.model.trainable_variables)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                          step=self.step)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.ckpt_dir, max_to_keep=3)
    self.train_step = make_train_step(self.model, self.optimizer, self.step)
    self.writer = None
    self.valid_data = None

  def restore(self) -> int:
    training.remove_dead_checkpoint_writes(self.ckpt_dir)
    latest = self.manager.latest_checkpoint
    if latest:
      try:
        self.checkpoint.restore(latest).assert_existing_objects_matched()
      except (ValueError, AssertionError, tf.errors.OpError) as e:
        raise ConfigError(
            f'checkpoint {latest} does not fit {self.config.vae.model}'
            f'({model_kwargs(self.config)}): {str(e).splitlines()[0][:300]}. Train with the '
            f'config it was written with, or use a fresh run dir') from None
      logging.info('resumed from %s at step %d', latest, int(self.step))
    training.apply_learning_rate(self.optimizer, self.config.vae.learning_rate,
                                 'vae.learning_rate')
    return int(self.step)

  def save(self) -> None:
    self.manager.save(checkpoint_number=int(self.step))

  def read_error(self, error: tf.errors.DataLossError) -> DataError:
    """Saves the steps trained since the last checkpoint; the error that names the bad shard."""
    step = int(self.step)
    if step and not training.checkpointed(self.manager, step):
      self.save()
    run = self.stage.run
    read = [run.split_dir('shard', s) for s in runs.SPLITS
            if os.path.exists(os.path.join(run.split_dir('shard', s), shard.MANIFEST))]
    return datasets.read_error(error, read, run.root, training.resume_note(step, self.ckpt_dir))

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

  def frames(self, paths: list[str], seed: int) -> tf.data.Dataset:
    data = self.config.data
    return datasets.raw_frames(paths, data.obs_sampled_per_rollout, data.shuffle_buffer,
                               data.batch_size, seed=seed)

  def check_frames(self, batch: tf.Tensor, paths: list[str]) -> None:
    want = (self.config.data.batch_size, *self.model.frame_shape)
    if tuple(batch.shape) != want or batch.dtype != tf.uint8:
      raise DataError(f'frames in {os.path.dirname(paths[0])} are {batch.dtype.name} '
                      f'{tuple(batch.shape[1:])}; the encoder expects uint8 {want[1:]} '
                      f'(env.frame_size={self.config.env.frame_size}); reshard the data or fix '
                      '--config.env.frame_size')

  # ------------------------------------------------------------------------ summaries

  def log_scalars(self, family: str, metrics: dict[str, Any], step: int) -> None:
    with self.writer.as_default(step=step):
      for key, value in metrics.items():
        tf.summary.scalar(f'{family}/{key}', float(value))

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
    with self.writer.as_default(step=step):
      tf.summary.image('valid/frame_and_reconstruction', images, max_outputs=NUM_IMAGES)
    logging.info('step %d: valid/loss %.3f (recon %.3f, kl %.3f)', step, metrics['loss'],
                 metrics['recon'], metrics['kl'])
    return metrics

  # ------------------------------------------------------------------------ the loop

  def run(self) -> None:
    vae, run = self.config.vae, self.stage.run
    with training.Preemption() as preemption:
      start = self.restore()
      finished = run.is_done('vae') and _export_step(self.export_dir) == start
      if start >= vae.train_steps and finished:
        logging.info('V is trained to step %d (vae.train_steps=%d) and exported in %s: nothing '
                     'to do; raise vae.train_steps to train longer', start, vae.train_steps,
                     self.export_dir)
        return
      run.clear_done('vae')
      self.writer = tf.summary.create_file_writer(os.path.join(self.stage.dir, 'tb'))
      train_paths, valid_paths = self.split_paths('train'), self.split_paths('valid')
      if valid_paths:
        self.valid_data = self.frames(valid_paths, self.config.seed).take(
            vae.valid_batches).cache()
      try:
        if start < vae.train_steps:
          self.loop(start, train_paths, preemption)
        self.validate(int(self.step))
      except tf.errors.DataLossError as e:  # a shard is corrupted: inflate() or a CRC failed
        raise self.read_error(e) from None
      self.writer.flush()
      self.finish()

  def loop(self, start: int, paths: list[str], preemption: training.Preemption) -> None:
    vae = self.config.vae
    log_every, save_every = training.Every(vae.log_every), training.Every(vae.save_every)
    batches = iter(self.frames(paths, seed=self.config.seed * 1_000_003 + start))
    progress = Progress('vae train steps', vae.train_steps)
    step = start
    while step < vae.train_steps:
      if preemption.requested:
        self.save()
        self.writer.flush()
        training.exit_for_requeue(f'step {step} in {self.ckpt_dir}')
      frames = next(batches)
      if step == start:
        self.check_frames(frames, paths)
      metrics = self.train_step(frames)
      step = int(self.step)
      training.check_finite('train/loss', float(metrics['loss']), step, self.ckpt_dir)
      if log_every(step):
        self.log_scalars('train', metrics, step)
      if save_every(step) or step == vae.train_steps:
        self.save()
        if step < vae.train_steps:
          self.validate(step)
      progress.update(step, images=(step - start) * self.config.data.batch_size)

  def finish(self) -> None:
    step = int(self.step)
    export.save(self.model, self.export_dir, kind='encoder', name=self.config.vae.model,
                kwargs=model_kwargs(self.config), step=step)
    self.stage.run.mark_done('vae', step=step, export=self.export_dir)
    logging.info('exported the encoder at step %d to %s', step, self.export_dir)


def _export_step(folder: str) -> int | None:
  try:
    return export.read_info(folder).get('step')
  except DataError:
    return None


def run(stage: cli.Stage, check_numerics: bool = False, run_eagerly: bool = False) -> None:
  if check_numerics:
    tf.debugging.enable_check_numerics()
  if run_eagerly:
    tf.config.run_functions_eagerly(True)
  Trainer(stage).run()
