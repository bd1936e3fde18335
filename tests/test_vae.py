"""Stage 3: V trains for real on the debug data, resumes by rerun, stops cleanly on preemption or
divergence, and exports an encoder that later stages load back."""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import DEBUG, REPO, copy_run, expected_cpu_kernels, run_script, script_env
from wm import datasets, training
from wm.infra import cli, runs
from wm.stages import shard, vae
from wm import config as config_lib
from wm.errors import ConfigError, DataError
from wm.infra import fileio
from wm.models import export
from wm.models.vae import ConvVAE


def latest_step(run_dir: str) -> int | None:
  latest = tf.train.latest_checkpoint(os.path.join(run_dir, 'vae', 'checkpoints'))
  return int(latest.rsplit('-', 1)[1]) if latest else None


def test_debug_training_resumes_and_tops_up(debug_encoded, tmp_path):
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  assert latest_step(run_dir) == 20  # the fixture's run: vae.train_steps=20 in the debug preset
  assert export.read_info(os.path.join(run_dir, 'vae', 'export'))['step'] == 20
  assert os.path.exists(os.path.join(run_dir, 'vae', 'DONE'))
  assert any(f.startswith('events') for f in os.listdir(os.path.join(run_dir, 'vae', 'tb')))

  result = run_script('train_vae', f'--run_dir={run_dir}', '--config.vae.train_steps=30')
  assert 'at step 20' in result.stderr  # resumed, not restarted
  assert latest_step(run_dir) == 30
  device = fileio.read_json(os.path.join(run_dir, 'vae', 'snapshot', 'device.json'))
  assert device['cpu_kernels'] == expected_cpu_kernels(), device  # the stage asks for oneDNN
  assert export.read_info(os.path.join(run_dir, 'vae', 'export'))['step'] == 30

  weights = os.path.join(run_dir, 'vae', 'export', 'model.weights.h5')
  before = os.stat(weights).st_mtime_ns
  result = run_script('train_vae', f'--run_dir={run_dir}', '--config.vae.train_steps=30')
  assert 'nothing to do' in result.stderr
  assert os.stat(weights).st_mtime_ns == before



def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(debug_encoded, tmp_path):
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  config = config_lib.load(DEBUG)
  config.vae.train_steps, config.vae.learning_rate = 40, 1e30  # diverges within a few steps
  stage = cli.Stage('vae', config, runs.Run(run_dir), {})
  with pytest.raises(training.NonFiniteLossError, match='training diverged'):
    vae.train(stage)
  assert latest_step(run_dir) == 20


def test_checkpoints_without_model_json_resume_and_another_shape_is_refused(debug_encoded,
                                                                           tmp_path, caplog):
  """Checkpoints saved before they named their model (checkpoints/model.json) still resume, and
  get one; then a config that changes the encoder's shape is refused before anything changes."""
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  named = os.path.join(run_dir, 'vae', 'checkpoints', 'model.json')
  if os.path.exists(named):
    os.remove(named)
  config = config_lib.load(DEBUG)
  config.vae.train_steps, config.vae.kl_tolerance = 21, 0.25  # kl_tolerance shapes no variable
  with caplog.at_level(logging.INFO):
    vae.run(cli.Stage('vae', config, runs.Run(run_dir), {}))
  assert re.search(r'resumed from \S+ckpt-20 at step 20', caplog.text), caplog.text[-3000:]
  assert latest_step(run_dir) == 21
  assert fileio.read_json(named) == {'name': 'conv_vae', 'kwargs': {'z_size': 8, 'frame_size': 64}}

  config.vae.z_size = 16
  with pytest.raises(ConfigError, match=r'checkpoints in \S+ are of .* use the vae\.\* config'):
    vae.run(cli.Stage('vae', config, runs.Run(run_dir), {}))
  assert latest_step(run_dir) == 21 and os.path.exists(os.path.join(run_dir, 'vae', 'DONE'))


def test_a_narrower_v_trains_exports_and_its_checkpoints_refuse_the_full_width(debug_data,
                                                                               tmp_path):
  """vae.width=0.5 halves every channel count (a quarter of most convolutions' work); the export
  rebuilds it at that width, and its checkpoints refuse a config of the paper's width."""
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  config = config_lib.load(DEBUG)
  config.vae.width, config.vae.train_steps = 0.5, 4
  vae.train(cli.Stage('vae', config, runs.Run(run_dir), {}))
  model = export.load(os.path.join(run_dir, 'vae', 'export'), kind='encoder')
  assert [conv.filters for conv in model.encoder_convs] == [16, 32, 64, 128]
  assert [deconv.filters for deconv in model.decoder_deconvs] == [32, 16, 3]
  full = ConvVAE(z_size=8)
  full.build_for_loading()
  assert model.count_params() < 0.35 * full.count_params(), (model.count_params(),
                                                             full.count_params())
  frames = tiny_frames(run_dir, 4)
  assert model.encode(frames)[0].shape == (4, 8)
  assert model(frames)['reconstruction'].shape == (4, 64, 64, 3)

  config.vae.width, config.vae.train_steps = 1.0, 6
  with pytest.raises(ConfigError, match=r"are of .*'width': 0\.5.* use the vae\.\* config"):
    vae.train(cli.Stage('vae', config, runs.Run(run_dir), {}))
  assert latest_step(run_dir) == 4


def test_preemption_signal_saves_and_asks_for_requeue(debug_data, tmp_path):
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  argv = [sys.executable, os.path.join(REPO, 'scripts', 'train_vae.py'), f'--run_dir={run_dir}',
          f'--config={DEBUG}', '--config.vae.train_steps=100000',
          '--config.vae.save_every=5']
  process = subprocess.Popen(argv, env=script_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while latest_step(run_dir) is None and process.poll() is None and time.time() < deadline:
      time.sleep(0.2)
    assert process.poll() is None, process.stderr.read()[-3000:]
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == training.EXIT_REQUEUE, stderr[-3000:]
  assert 'SIGUSR1 received' in stderr
  saved = re.search(r'after saving step (\d+)', stderr)
  assert saved, stderr[-3000:]
  assert latest_step(run_dir) == int(saved.group(1)) >= 5
  assert not os.path.exists(os.path.join(run_dir, 'vae', 'DONE'))


def tiny_frames(run_dir: str, count: int = 16) -> tf.Tensor:
  paths = shard.shard_paths(os.path.join(run_dir, 'records', 'train'))
  frames = np.concatenate([x['frames'].numpy() for x in datasets.raw_rollouts(paths, True)])
  return tf.constant(frames[np.linspace(0, len(frames) - 1, count).astype(int)])


def test_reconstruction_loss_falls_on_a_tiny_data_set(debug_data):
  frames = tiny_frames(debug_data)
  tf.keras.utils.set_random_seed(0)
  model = ConvVAE(z_size=8, mixed_precision=False)
  model.build_for_loading()
  optimizer = tf.keras.optimizers.Adam(1e-3)
  seed = tf.constant([0, 0])

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = model.losses_for(frames)['loss']
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  before = float(model.losses_for(frames, seed=seed)['recon'])
  for _ in range(40):
    step()
  after = float(model.losses_for(frames, seed=seed)['recon'])
  assert after < 0.6 * before, (before, after)  # the untrained decoder's error falls by >40%


def test_export_loads_back_the_trained_encoder(debug_encoded):
  folder = os.path.join(debug_encoded, 'vae', 'export')
  model = export.load(folder, kind='encoder')
  assert isinstance(model, ConvVAE)
  assert (model.z_size, model.frame_shape) == (8, (64, 64, 3))
  frames = tiny_frames(debug_encoded, 8)
  mu, logvar = model.encode(frames)
  assert mu.shape == (8, 8) and mu.dtype == tf.float32 and logvar.dtype == tf.float32

  # The same weights as the final checkpoint.
  reference = ConvVAE(**export.read_info(folder)['kwargs'])
  reference.build_for_loading()
  checkpoint = tf.train.Checkpoint(model=reference)
  checkpoint.restore(tf.train.latest_checkpoint(
      os.path.join(debug_encoded, 'vae', 'checkpoints'))).expect_partial()
  np.testing.assert_allclose(reference.encode(frames)[0].numpy(), mu.numpy(), rtol=1e-5, atol=1e-5)
  untrained = ConvVAE(**export.read_info(folder)['kwargs'])
  untrained.build_for_loading()
  assert not np.allclose(untrained.encode(frames)[0].numpy(), mu.numpy(), atol=1e-3)

  with pytest.raises(DataError, match='expected a sequence_model'):
    export.load(folder, kind='sequence_model')


def test_the_same_seed_trains_the_same_v(debug_data, tmp_path):
  # V's initial weights, the rollouts' order, the frames drawn from each and the latent noise all
  # come from config.seed: two runs on the same data give the same weights, another seed others.
  weights = {}
  for name, seed in (('first', 0), ('again', 0), ('other', 1)):
    run_dir = copy_run(debug_data, str(tmp_path / name))
    config = config_lib.load(DEBUG)
    config.seed, config.vae.train_steps = seed, 6
    vae.train(cli.Stage('vae', config, runs.Run(run_dir), {}))
    weights[name] = export.load(os.path.join(run_dir, 'vae', 'export'), kind='encoder').get_weights()
  assert all(np.array_equal(a, b) for a, b in zip(weights['first'], weights['again']))
  assert not all(np.array_equal(a, b) for a, b in zip(weights['first'], weights['other']))
