"""Benchmark of stages 3 and 4 on this machine, every figure side by side in one run:

  (a) V training images/s: our train step (wm/stages/vae.py, fp32 and mixed bfloat16; the one
      vae.precision picks on this machine is compared, wm/hardware.py) against a
      straightforward Keras `fit` of the paper's architecture (Dense(1024) -> 1x1 map -> 4
      deconvolutions, KL via add_loss) on the same in-memory batches;
  (b) encoding frames/s: the encoder alone on batches of encode.batch_size frames, and the
      encode stage end to end (read shards, decode, encode, serialize, GZIP write);
  (c) reading: frames/s of the V input pipeline (wm/datasets.raw_frames) over training images/s.

Input:  none (it writes synthetic 1000-frame rollouts into a temporary folder), or the raw
        shards of a run with --run_dir (RUN/records/train).
Output: the figures on stdout.

    python scripts/benchmark_vae.py [--run_dir=RUN] [--config=configs/carracing.py:small]

Goals: (a) >= 2x the Keras fit, (b) >= 5,000 frames/s on 2 CPU cores, (c) >= 20.
Each measurement is repeated in alternating rounds and the median is shown, so background load
affects every variant alike.
"""

import os
import statistics
import sys
import shutil
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import cpu_kernels, quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log
cpu_kernels.use_onednn()  # the kernels of the vae and encode stages, for both sides

from absl import app, flags

from wm.infra import cli, runs

_STEPS = flags.DEFINE_integer('steps', 6, 'Train steps per timed round.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds per variant (the median is shown).')
_ROLLOUTS = flags.DEFINE_integer('synthetic_rollouts', 8, 'Synthetic rollouts (1000 frames each).')


def synthetic_shards(folder: str, count: int, frames_per_rollout: int = 1000) -> list[str]:
  """GZIP shards of smooth random frames (compressible like rendered ones), 2 rollouts each."""
  import numpy as np
  from wm import records
  rng = np.random.default_rng(0)
  paths = []
  for k in range(0, count, 2):
    examples = []
    for index in range(k, min(k + 2, count)):
      base = rng.integers(0, 255, (16, 16, 3), np.uint8).repeat(8, 0).repeat(8, 1)
      frames = np.stack([np.roll(base, t, axis=0)[:64, :64] for t in range(frames_per_rollout)])
      steps = frames_per_rollout - 1
      examples.append(records.raw_example({
          'frames': frames, 'actions': rng.uniform(-1, 1, (steps, 3)).astype(np.float32),
          'rewards': np.zeros(steps, np.float32), 'terminated': np.zeros(steps, np.uint8),
          'truncated': np.zeros(steps, np.uint8), 'seed': index}, index))
    path = os.path.join(folder, records.shard_name('raw', k // 2, (count + 1) // 2))
    records.write(path, examples)
    paths.append(path)
  return paths


def paper_keras_vae(z_size: int):
  """The paper's VAE written plainly for Keras fit (the baseline)."""
  import tensorflow as tf
  layers = tf.keras.layers

  class Sample(layers.Layer):
    def call(self, mu, logvar):
      kl = -0.5 * tf.reduce_sum(1.0 + logvar - tf.square(mu) - tf.exp(logvar), axis=1)
      self.add_loss(tf.reduce_mean(tf.maximum(kl, 0.5 * z_size)))
      return mu + tf.exp(0.5 * logvar) * tf.random.normal(tf.shape(mu))

  inputs = tf.keras.Input((64, 64, 3))
  x = inputs
  for filters in (32, 64, 128, 256):
    x = layers.Conv2D(filters, 4, strides=2, activation='relu')(x)
  x = layers.Flatten()(x)
  z = Sample()(layers.Dense(z_size)(x), layers.Dense(z_size)(x))
  x = layers.Reshape((1, 1, 1024))(layers.Dense(1024)(z))
  x = layers.Conv2DTranspose(128, 5, strides=2, activation='relu')(x)
  x = layers.Conv2DTranspose(64, 5, strides=2, activation='relu')(x)
  x = layers.Conv2DTranspose(32, 6, strides=2, activation='relu')(x)
  x = layers.Conv2DTranspose(3, 6, strides=2, activation='sigmoid')(x)
  model = tf.keras.Model(inputs, x)
  model.compile(tf.keras.optimizers.Adam(1e-4),
                loss=lambda y, p: tf.reduce_sum(tf.square(y - p), axis=[1, 2, 3]))
  return model


def cpu_model() -> str:
  """The CPU's model name, from /proc/cpuinfo (the benchmark's figures depend on it)."""
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
  except OSError:
    names = []
  return names[0] if names else 'unknown CPU'


def timed(fn, rounds: int) -> list[tuple[float, float]]:
  """(wall seconds, CPU seconds of this process) of each of `rounds` calls of fn."""
  out = []
  for _ in range(rounds):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    out.append((time.perf_counter() - wall, time.process_time() - cpu))
  return out


def rate(count: float, times: list[tuple[float, float]]) -> tuple[float, float]:
  """Median items per wall second and per CPU second."""
  return (count / statistics.median(t[0] for t in times),
          count / statistics.median(t[1] for t in times))


_OVERRIDES = {}


def main(argv: list[str]) -> None:
  del argv
  import tensorflow as tf
  from wm import datasets, distribute, hardware
  from wm.stages import encode, shard, vae
  from wm.models import export
  from wm.models.vae import ConvVAE
  from wm.infra.progress import Progress
  config = cli.resolve_config(flags.FLAGS.run_dir, _OVERRIDES)
  run = runs.Run(flags.FLAGS.run_dir) if flags.FLAGS.run_dir else None
  batch, steps, rounds = config.data.batch_size, _STEPS.value, _ROUNDS.value
  tmp = tempfile.mkdtemp(prefix='benchmark_vae-')
  if run and os.path.exists(os.path.join(run.split_dir('shard', 'train'), shard.MANIFEST)):
    paths = shard.shard_paths(run.split_dir('shard', 'train'))
    source = f'shards of {run.root}'
  else:
    paths = synthetic_shards(tmp, _ROLLOUTS.value)
    source = f'{_ROLLOUTS.value} synthetic 1000-frame rollouts'
  print(f'data: {source}; batch {batch}, z {config.vae.z_size}, {os.cpu_count()} CPUs, load '
        f'average {os.getloadavg()[0]:.1f} (other processes share these CPUs)')

  data = datasets.raw_frames(paths, config.data.obs_sampled_per_rollout,
                             config.data.shuffle_buffer, batch, seed=0)
  batches = [b for b, _ in zip(data, range(8))]
  memory = tf.data.Dataset.from_tensor_slices(tf.stack(batches)).repeat()

  # (a) training.
  variants = {}
  for mixed in (False, True):
    model = ConvVAE(z_size=config.vae.z_size, mixed_precision=mixed)
    model.build_for_loading()
    optimizer = tf.keras.optimizers.Adam(config.vae.learning_rate)
    train = vae.make_train_step(model, optimizer, distribute.one_device(), batch, seed=0)
    feed, step_number, stop = iter(memory), tf.constant(0, tf.int64), tf.constant(0.0)
    train(next(feed), step_number, stop)

    def run(train=train, feed=feed, step_number=step_number, stop=stop):
      for _ in range(steps):
        float(train(next(feed), step_number, stop)['loss'])
    variants['ours, mixed bfloat16' if mixed else 'ours, float32'] = run
  keras_feed = memory.map(lambda x: (tf.cast(x, tf.float32) / 255.0,) * 2)
  for jit in ('auto', False):
    baseline = paper_keras_vae(config.vae.z_size)
    baseline.compile(baseline.optimizer, baseline.loss, jit_compile=jit)
    baseline.fit(keras_feed, steps_per_epoch=2, epochs=1, verbose=0)
    variants[f'Keras fit (jit_compile={jit})'] = (
        lambda b=baseline: b.fit(keras_feed, steps_per_epoch=steps, epochs=1, verbose=0))
  times = {name: [] for name in variants}
  for _ in range(rounds):
    for name, fn in variants.items():
      times[name] += timed(fn, 1)  # alternating, so load changes hit every variant
  rates = {name: rate(steps * batch, t) for name, t in times.items()}
  for name, (wall, cpu) in rates.items():
    print(f'  train  {name:32s} {wall:8,.0f} images/s {cpu:8,.0f} images/CPU-s')
  device = hardware.describe(config.vae.precision)
  mixed = device['precision'] == 'bfloat16'
  ours_name = 'ours, mixed bfloat16' if mixed else 'ours, float32'
  ours = rates[ours_name]
  print(f'vae.precision={config.vae.precision}: {device["precision"]} ({device["device"]}, '
        f'{cpu_model()})')
  for which, i in (('wall time', 0), ('CPU time', 1)):
    keras_best = max(v[i] for k, v in rates.items() if k.startswith('Keras'))
    keras_default = rates['Keras fit (jit_compile=auto)'][i]
    print(f'(a) by {which}: {ours_name} (vae.precision={config.vae.precision}) over '
          f'Keras fit: {ours[i] / keras_default:.2f}x (default compile), '
          f'{ours[i] / keras_best:.2f}x (its best)   goal >= 2')

  # (b) encode.
  model = ConvVAE(z_size=config.vae.z_size, mixed_precision=mixed)
  model.build_for_loading()
  export_dir = os.path.join(tmp, 'export')
  export.save(model, export_dir, kind='encoder', name='conv_vae', kwargs=model.get_config())
  encoder = encode.Encoder(export_dir, config.encode.batch_size)
  frames = tf.concat(batches, 0)
  while frames.shape[0] < config.encode.batch_size * 2:
    frames = tf.concat([frames, frames], 0)
  encoder(frames)
  model_rate, model_cpu_rate = rate(len(frames), timed(lambda: encoder(frames), rounds))
  raw_dir = os.path.dirname(paths[0])
  manifest = {'shards': [{'file': os.path.basename(p), 'rollouts': [int(x['index']) for x in
                          datasets.raw_rollouts([p])]} for p in paths]}
  outputs = encode.plan(manifest, 1, 1)
  data_info = encode.probe(raw_dir, paths)
  out_dir = os.path.join(tmp, 'encoded')
  os.makedirs(out_dir)
  progress = Progress('encode', sum(len(o.rollouts) for o in outputs))
  counts = {'rollouts': 0, 'frames': 0}
  stage_times = timed(lambda: encode.write_output(encoder, raw_dir, out_dir, outputs[0],
                                                    data_info, progress, counts), 1)
  stage_rate, stage_cpu_rate = rate(counts['frames'], stage_times)
  print(f'(b) encoding: encoder alone {model_rate:,.0f} frames/s ({model_cpu_rate:,.0f} per '
        f'CPU-s, batch {config.encode.batch_size}), encode stage end to end {stage_rate:,.0f} '
        f'frames/s ({stage_cpu_rate:,.0f} per CPU-s)   goal >= 5,000')

  # (c) reading.
  feed = iter(data)
  for _ in range(max(5, config.data.shuffle_buffer // batch)):  # fill the shuffle buffer
    next(feed)
  read_batches = 50
  read_rate = rate(read_batches * batch,
                   timed(lambda: [next(feed) for _ in range(read_batches)], rounds))[0]
  print(f'(c) reading {read_rate:,.0f} frames/s over training {ours[0]:,.0f} images/s: '
        f'{read_rate / ours[0]:.1f}   goal >= 20')
  print(f'load average at the end: {os.getloadavg()[0]:.1f}')
  shutil.rmtree(tmp, ignore_errors=True)


def parse(argv: list[str]) -> list[str]:
  rest, overrides = cli.split_overrides(argv)
  _OVERRIDES.update(overrides)
  return flags.FLAGS(rest)


if __name__ == '__main__':
  app.run(main, flags_parser=parse)
