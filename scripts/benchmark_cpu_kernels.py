"""Benchmark of TensorFlow's CPU kernels, oneDNN's against Eigen's, on each stage's own work.

TensorFlow picks its kernels once, as it loads (TF_ENABLE_ONEDNN_OPTS), and turns oneDNN on by
itself only on CPUs with AVX-512 VNNI, AVX512-BF16 or AMX: which kernels a stage asks for is
chosen by this measurement (wm/infra/cpu_kernels.py). Each figure is measured in a child process
per kernel library, the two alternating in rounds so that other load on the machine hits both;
the median of the rounds is shown.

Input:  RUN with V and M exports and RUN/seq/initial_latents.npz (trained or freshly initialised:
        speed does not depend on the weights), and its config's sizes.
Output: printed, for each piece of work, its rate with Eigen's kernels, with oneDNN's, and the
        ratio (oneDNN over Eigen; above 1, oneDNN is faster):
          vae      V's train step (wm/stages/vae.py) on a batch of data.batch_size frames
          encode   V's encoder on batches of encode.batch_size frames (the encode stage's call)
          seq      M's train step (wm/stages/seq.py Trainer) on seq.batch_size x
                   seq.sequence_length steps
          dream    the dream's V+M+C steps, controller.population_size x controller.trials
                   episodes as one batch (M's done head ignored: every episode runs --dream_steps)
          agent    V+M+C's call for a batch of controller.eval_episodes frames (the real-game
                   agent's, the environment not included)

    python scripts/benchmark_cpu_kernels.py --run_dir=RUN [--config=configs/doom.py:small]
"""

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

KERNELS = {'Eigen': '0', 'oneDNN': '1'}  # TF_ENABLE_ONEDNN_OPTS for each

_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds; each measures every figure with both.')
_SECONDS = flags.DEFINE_float('seconds', 8.0, 'Timed seconds of each figure in a round.')
_DREAM_STEPS = flags.DEFINE_integer('dream_steps', 200, 'Steps per dream episode.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: measure this work in this process.')


def measure(work: str, seconds: float, dream_steps: int) -> tuple[float, str, str]:
  """In this process: (items per second of `work`, its unit, the kernels TensorFlow runs)."""
  from wm.infra import cpu_kernels
  run, config = cli.run_to_read('a run dir with V and M exports')
  call, items, unit = WORKLOADS[work](run, config, dream_steps)
  call()  # traced and warm
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    call()
    count += 1
  return items * count / (time.perf_counter() - start), unit, cpu_kernels.in_use()


def v_work(run, config, dream_steps, encode_only=False):
  """V's train step on data.batch_size frames, or its encoder on encode.batch_size."""
  del run, dream_steps
  import numpy as np
  import tensorflow as tf
  from wm import distribute
  from wm.models.vae import ConvVAE
  from wm.stages import vae as vae_stage
  batch = config.encode.batch_size if encode_only else config.data.batch_size
  frames = tf.constant(np.random.default_rng(0).integers(0, 255, (batch, 64, 64, 3), np.uint8))
  model = ConvVAE(z_size=config.vae.z_size)
  model.build_for_loading()
  if encode_only:
    encode = tf.function(model.encode)

    def call():
      return encode(frames)[0].numpy()
  else:
    train = vae_stage.make_train_step(model, tf.keras.optimizers.Adam(1e-4),
                                      distribute.one_device(), batch, seed=0)
    step, stop = tf.constant(0, tf.int64), tf.constant(0.0)

    def call():
      return float(train(frames, step, stop)['loss'])
  return call, batch, 'frames/s'


def seq_work(run, config, dream_steps):
  """M's train step on seq.batch_size x seq.sequence_length steps (M's sizes, fresh weights)."""
  del dream_steps
  from wm import artifacts, sequences
  from wm.stages import seq as seq_stage
  m = artifacts.load_models(run).seq  # its sizes only: V and the environment are not needed
  b, t, z, a = config.seq.batch_size, config.seq.sequence_length, m.z_size, m.action_size
  data = sequences.random_batch(b, t, z, a)
  fresh = type(m)(**m.get_config())
  trainer = seq_stage.Trainer(fresh, config.seq.learning_rate, grad_clip=config.seq.grad_clip,
                              done_weight=config.seq.done_weight)

  def call():
    return float(trainer.train_step(data)['loss'])
  return call, b * t, 'sequence-steps/s'


def agent_work(run, config, dream_steps, dream=False):
  """The run's V+M+C: the dream's steps for population_size x trials episodes, or the agent's
  call for eval_episodes frames."""
  import numpy as np
  import tensorflow as tf
  from wm.agent import WorldModel, action_space_of
  from wm.dream import Dream
  world = WorldModel.load(run, config, action_space_of(config))
  rng = np.random.default_rng(0)
  params = rng.normal(size=(config.controller.population_size * config.controller.trials,
                            world.controller.num_params)) * 0.1
  if dream:
    episodes = Dream.load(world, run, dream_steps, config.controller.dream_temperature,
                          use_done=False)
    z0 = episodes.start.draw(len(params), rng)

    def call():
      return episodes.returns(params, z0, np.array([1, 2]))
    return call, call()[1], 'episode steps/s'
  n = config.controller.eval_episodes
  frames = tf.constant(rng.integers(0, 255, (n, 64, 64, 3), np.uint8))
  state, rows = world.seq.initial_state(n), tf.constant(params[:n], tf.float32)

  def call():
    return world.act(frames, state, rows)[0].numpy()
  return call, n, 'agent steps/s'


WORKLOADS = {
    'vae': v_work,
    'encode': lambda run, config, steps: v_work(run, config, steps, encode_only=True),
    'seq': seq_work,
    'dream': lambda run, config, steps: agent_work(run, config, steps, dream=True),
    'agent': agent_work,
}
WORK = tuple(WORKLOADS)
_WORK = flags.DEFINE_list('work', list(WORK), f'What to measure, of {", ".join(WORK)}.')
cli.refuse_unknown('work', WORK, 'the work is')


def child(work: str, kernels: str) -> tuple[float, str]:
  argv = [sys.executable, os.path.abspath(__file__), f'--child={work}',
          f'--seconds={_SECONDS.value}', f'--dream_steps={_DREAM_STEPS.value}',
          *[a for a in sys.argv[1:] if a.split('=')[0] not in ('--child', '--work', '--rounds')]]
  env = {**os.environ, 'TF_ENABLE_ONEDNN_OPTS': KERNELS[kernels]}
  result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
  lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
  if result.returncode != 0 or not lines:
    raise SystemExit(f'error: measuring {work} with {kernels} kernels failed (exit '
                     f'{result.returncode}):\n{result.stderr[-3000:]}')
  out = json.loads(lines[-1])
  if out['kernels'] != kernels:
    raise SystemExit(f'error: asked TensorFlow for {kernels} kernels, it ran {out["kernels"]}')
  return out['rate'], out['unit']


def main(argv: list[str]) -> None:
  del argv
  if _CHILD.value:
    rate, unit, kernels = measure(_CHILD.value, _SECONDS.value, _DREAM_STEPS.value)
    print(json.dumps({'rate': rate, 'unit': unit, 'kernels': kernels}))
    return
  cli.run_to_read('a run dir with V and M exports')  # refused here, before any child starts
  rates = {(w, k): [] for w in _WORK.value for k in KERNELS}
  units = {}
  for r in range(_ROUNDS.value):
    for work in _WORK.value:
      for kernels in (list(KERNELS) if r % 2 == 0 else list(KERNELS)[::-1]):
        rate, units[work] = child(work, kernels)
        rates[work, kernels].append(rate)
  print(f'CPU kernels, medians of {_ROUNDS.value} alternating rounds, {os.cpu_count()} CPUs:')
  print(f'  {"work":8s} {"Eigen":>12s} {"oneDNN":>12s}  oneDNN / Eigen')
  for work in _WORK.value:
    eigen, onednn = (statistics.median(rates[work, k]) for k in KERNELS)
    print(f'  {work:8s} {eigen:12,.0f} {onednn:12,.0f}  {onednn / eigen:5.2f}x   {units[work]}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
