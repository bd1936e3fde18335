"""Benchmark of V's and M's training under tf.distribute: samples/s on one device, on 2 replicas
of one process (MirroredStrategy) and on 2 worker processes (MultiWorkerMirroredStrategy on
localhost), side by side in one run, and their ratios to one device.

Without GPUs the 2 replicas are logical devices splitting the same CPU cores (the 2 worker
processes each pinned to half of them, as SLURM binds a task to its --cpus-per-task), so the ratio
measures the strategy's overhead, not a speed-up (the goal on GPUs: 1.8x on 2, 3.4x on 4). Each
measurement is a fresh process (a strategy is set up before any other TensorFlow op); the kinds
alternate round by round so that background load hits them alike, and the median is shown.

Input:  none (synthetic in-memory batches at the config's sizes).
Output: the figures on stdout.

    python scripts/benchmark_distribute.py [--config=configs/carracing.py:small] [--rounds=3]
"""

import functools
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import app, flags

from wm.infra import cli

_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds; each measures every kind once.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed train steps per model and measurement.')
_MEASURE = flags.DEFINE_string('measure', None, 'Internal: measure this kind and print JSON.')
KINDS = ('one_device', 'mirrored', 'multi_worker')


def measure(kind: str, steps: int) -> dict:
  """This process's samples/s of V and M under `kind` (2 replicas unless one_device)."""
  import numpy as np
  import tensorflow as tf
  from wm import distribute
  from wm.models import registry
  from wm.stages import seq as seq_stage, vae as vae_stage
  config = cli.resolve_config(None, cli.overrides())
  config.distribute.strategy, config.distribute.cpu_replicas = kind, 2
  dist = distribute.create(config.distribute)
  rng = np.random.RandomState(0)
  batch, size = config.data.batch_size, config.env.frame_size
  frames = tf.data.Dataset.from_tensors(
      rng.randint(0, 256, (batch, size, size, 3)).astype(np.uint8)).repeat()
  with dist.scope():
    model = vae_stage.build_model(config)
    optimizer = tf.keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
  vae_step = vae_stage.make_train_step(model, optimizer, dist, batch, seed=0)
  feed, number, stop = iter(dist.global_batches(frames)), tf.constant(0, tf.int64), tf.constant(0.)
  vae_rate = timed(lambda: float(vae_step(next(feed), number, stop)['loss']), steps) * batch

  seq = config.seq
  z, actions = config.vae.z_size, 3
  shape = (seq.batch_size, seq.sequence_length)
  sequences = tf.data.Dataset.from_tensors({
      'z': rng.randn(*shape, z).astype(np.float32),
      'actions': rng.uniform(-1, 1, (*shape, actions)).astype(np.float32),
      'z_next': rng.randn(*shape, z).astype(np.float32),
      'reward': rng.randn(*shape).astype(np.float32),
      'done': np.zeros(shape, np.float32), 'mask': np.ones(shape, np.float32)}).repeat()
  with dist.scope():
    m = registry.sequence_model_class(seq.model)(**seq_stage.model_kwargs(seq, z, actions))
    trainer = seq_stage.Trainer(m, seq.learning_rate, seq.grad_clip, dist)
  feed = iter(dist.global_batches(sequences))
  seq_rate = timed(lambda: float(trainer.train_step(next(feed), stop)['loss']), steps)
  return {'vae': vae_rate, 'seq': seq_rate * shape[0] * shape[1], 'replicas': dist.replicas,
          'chief': dist.chief}


def timed(step, count: int) -> float:
  """Steps per second over `count` steps, after two untimed ones (tracing)."""
  for _ in range(2):
    step()
  start = time.perf_counter()
  for _ in range(count):
    step()
  return count / (time.perf_counter() - start)


def run_kind(kind: str, argv: list[str]) -> dict:
  """Measures `kind` in fresh processes (two workers for multi_worker); the chief's figures."""
  command = [sys.executable, os.path.abspath(__file__), f'--measure={kind}', *argv]
  envs, cpus = [dict(os.environ)], [None]
  if kind == 'multi_worker':
    from wm import distribute  # pylint: disable=import-outside-toplevel
    envs = [dict(os.environ, TF_CONFIG=c) for c in distribute.localhost_tf_configs(2)]
    cpus = cpu_halves()
  procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True,
                            preexec_fn=None if mine is None else functools.partial(
                                os.sched_setaffinity, 0, mine))
           for env, mine in zip(envs, cpus)]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  if any(p.returncode for p in procs):
    raise SystemExit(f'measuring {kind} failed (exit {[p.returncode for p in procs]})')
  results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
  return next(r for r in results if r['chief'])


def cpu_halves() -> list[set[int] | None]:
  """Each of 2 worker processes' CPUs: half of this process's each, as a SLURM task of
  --cpus-per-task gets its own (TensorFlow sizes its thread pools to the CPUs it may use, so
  two unpinned processes would each run a pool as wide as the machine); None where the machine
  has a single CPU or the system cannot pin."""
  if not hasattr(os, 'sched_getaffinity'):
    return [None, None]
  mine = sorted(os.sched_getaffinity(0))
  if len(mine) < 2:
    return [None, None]
  half = len(mine) // 2
  return [set(mine[:half]), set(mine[half:])]


def main(argv: list[str]) -> None:
  del argv
  if _MEASURE.value:
    print(json.dumps(measure(_MEASURE.value, _STEPS.value)), flush=True)
    return
  config = cli.resolve_config(None, cli.overrides())
  passed = [a for a in sys.argv[1:] if not a.startswith('--rounds')]
  if not any(a.startswith('--config=') for a in passed):
    passed.append(f'--config={flags.FLAGS.config}')
  print(f'V: batch {config.data.batch_size} of {config.env.frame_size}x{config.env.frame_size}, '
        f'z {config.vae.z_size}; M: {config.seq.model} {config.seq.hidden_size}, batch '
        f'{config.seq.batch_size} x {config.seq.sequence_length}; {os.cpu_count()} CPUs, load '
        f'average {os.getloadavg()[0]:.1f}')
  rates = {kind: {'vae': [], 'seq': []} for kind in KINDS}
  for _ in range(_ROUNDS.value):
    for kind in KINDS:
      result = run_kind(kind, passed)
      for model in ('vae', 'seq'):
        rates[kind][model].append(result[model])
  for model, unit in (('vae', 'images/s'), ('seq', 'sequence steps/s')):
    base = statistics.median(rates['one_device'][model])
    for kind in KINDS:
      value = statistics.median(rates[kind][model])
      print(f'  {model:3s} {kind:12s} {value:10,.0f} {unit:16s} {value / base:5.2f}x one device')


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, ('config',)))
