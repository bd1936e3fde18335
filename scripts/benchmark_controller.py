"""Benchmark of the controller stage: dream vs real-environment steps/s, and 2 workers vs 1.

Input:  RUN/vae/export, RUN/seq/export, RUN/seq/initial_latents.npz (any trained or freshly
        initialised V and M: speed does not depend on the weights; dream episodes all run
        --dream_steps, whatever M's done head says).
Output: printed figures, side by side from one run, all in agent steps (one per
        env.action_repeat frames; the dream's steps are agent steps too):
          real env steps/s of V+M+C in one process (a batch of --real_envs environments, the
            run's controller when it has one, else random parameters; TensorFlow given the
            threads of one of the stage's --parallelism workers), with frames drawn at the
            config's env.render_scale and at full size (render_scale=1); the same batch
            replaying the agent's actions with no model (what V+M+C cost is the difference);
            the same batch with random actions; one environment alone with random actions on the
            same episodes (what the agent's steps/s is compared with: goal >= 0.9)
          dream steps/s of the same V+M+C (--dream_batch episodes as one batch inside M), with
            M's products in float32 and in controller.dream_precision's pick for this device
          real-env evaluation steps/s with a pool of 2 workers and of 1 worker

    python scripts/benchmark_controller.py --run_dir=RUN --config=configs/carracing.py:small

Goals on a 2-core machine: dream >= 300x real, 2 workers >= 1.8x one.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

import numpy as np
import tensorflow as tf
from absl import app, flags

from wm import artifacts, envs, es, evaluation, hardware, policies
from wm.infra import cli
from wm.agent import WorldModel, action_space_of
from wm.dream import Dream

_REAL_ENVS = flags.DEFINE_integer('real_envs', 16, 'Environments stepped together in one process '
                                  '(the small preset: 16 episodes a worker a generation).')
_REAL_STEPS = flags.DEFINE_integer('real_steps', 250, 'Frames per real episode measured '
                                   '(env.max_steps).')
_DREAM_BATCH = flags.DEFINE_integer('dream_batch', 256, 'Dream episodes in one batch '
                                    '(population x trials).')
_DREAM_STEPS = flags.DEFINE_integer('dream_steps', 1000, 'Steps per dream episode.')
_POOL_EPISODES = flags.DEFINE_integer('pool_episodes', 8, 'Episodes per pool measurement.')
_PARALLELISM = flags.DEFINE_integer('parallelism', 2, 'Workers the controller stage runs '
                                    '(--parallelism): the one process measured gets the '
                                    'TensorFlow threads each of them has.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Interleaved measurements of each figure; the best '
                                'counts.')


@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  del argv  # cli.parse_flags refused positional arguments
  run, config = cli.run_to_read('a run dir with V and M exports')
  config.env.max_steps = _REAL_STEPS.value
  threads = evaluation.worker_threads(_PARALLELISM.value)
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  model = WorldModel.load(run, config, action_space_of(config))
  rng = np.random.default_rng(0)
  n = model.controller.num_params

  worker = Recording(config, run.root)
  worker._world = model  # pylint: disable=protected-access  (the same V+M+C as the dream)
  seeds = es.episode_seeds(config.seed, es.TEST_STREAM, 99, _REAL_ENVS.value)
  params = rng.normal(size=(_REAL_ENVS.value, n)) * 0.1
  trained = os.path.exists(artifacts.controller_params_path(run))
  if trained:  # a car that drives steps dearer than one that idles: measure the run's own
    params = np.repeat(artifacts.load_params(artifacts.controller_params_path(run),
                                             model.controller)[None], _REAL_ENVS.value, axis=0)
  worker.evaluate(params[:1], seeds[:1])  # builds envs' first and traces the fused step
  full_worker = evaluation.Worker(envs.full_size(config), run.root)
  full_worker._world = model  # pylint: disable=protected-access
  full_worker.evaluate(params[:1], seeds[:1])
  # Every dream runs dream_steps (an untrained M's done head would end them at random), with M in
  # float32 and in the precision controller.dream_precision picks on this device.
  precision = hardware.precision(config.controller.dream_precision)
  dreams = {p: Dream.load(model, run, _DREAM_STEPS.value, config.controller.dream_temperature,
                          use_done=False, precision=p) for p in sorted({'float32', precision})}
  batch = rng.normal(size=(_DREAM_BATCH.value, n)) * 0.1
  z0 = dreams['float32'].start.draw(len(batch), rng)
  for dream in dreams.values():
    dream.returns(batch, z0, np.array([1, 2]))  # trace

  def real_rate(worker: evaluation.Worker, policy: np.ndarray | None = params) -> float:
    start, before = time.perf_counter(), worker.steps
    worker.evaluate(policy, seeds)
    return (worker.steps - before) / (time.perf_counter() - start)

  def env_alone_rate() -> float:
    """One environment, a uniformly random policy, the same episodes one after the other."""
    env, steps, start = envs.make(config.env), 0, time.perf_counter()
    for seed in seeds:
      policy = policies.UniformPolicy(env.action_space)
      policy.reset(int(seed))
      frame = env.reset(seed=int(seed))
      for _ in range(config.env.agent_steps()):
        frame, _, terminated, truncated = env.step(policy.act(frame).action)
        steps += 1
        if terminated or truncated:
          break
    env.close()
    return steps / (time.perf_counter() - start)

  def replay_rate() -> float:
    """The same environments and episodes stepped with the agent's last actions, no model."""
    batch = [envs.make(config.env) for _ in seeds]
    start = time.perf_counter()  # the resets count, as in the worker's and the lone env's figures
    for env, seed in zip(batch, seeds):
      env.reset(seed=int(seed))
    alive, steps = np.ones(len(batch), bool), 0
    for actions in worker.actions:
      for i in np.flatnonzero(alive):
        _, _, terminated, truncated = batch[i].step(actions[i])
        steps += 1
        alive[i] = not (terminated or truncated)
    rate = steps / (time.perf_counter() - start)
    for env in batch:
      env.close()
    return rate

  def dream_rate(dream: Dream) -> float:
    start = time.perf_counter()
    _, steps = dream.returns(batch, z0, np.array([3, 4]))
    return steps / (time.perf_counter() - start)

  # Interleaved repeats, best of each: other load on the machine hits both sides alike.
  real = real_full = replayed = random_batch = alone = 0.0
  dreamt = dict.fromkeys(dreams, 0.0)
  for _ in range(_REPEATS.value):
    real = max(real, real_rate(worker))
    replayed = max(replayed, replay_rate())
    real_full = max(real_full, real_rate(full_worker))
    for p, dream in dreams.items():
      dreamt[p] = max(dreamt[p], dream_rate(dream))
    random_batch = max(random_batch, real_rate(worker, None))
    alone = max(alone, env_alone_rate())

  jobs = _POOL_EPISODES.value
  with evaluation.Pool(config, run.root, 1) as one, evaluation.Pool(config, run.root, 2) as two:
    pools = {1: one, 2: two}
    for workers, pool in pools.items():  # tracing (V and M are loaded as the workers start)
      for _ in range(2):
        pool.evaluate(rng.normal(size=(workers, n)) * 0.1,
                      es.episode_seeds(config.seed, es.TEST_STREAM, 98, workers))
    pool_params = rng.normal(size=(jobs, n)) * 0.1
    pool_seeds = es.episode_seeds(config.seed, es.TEST_STREAM, 97, jobs)
    pool_rates = {1: 0.0, 2: 0.0}
    for _ in range(_REPEATS.value):
      for workers, pool in pools.items():
        start = time.perf_counter()
        played = pool.play(pool_params, pool_seeds).steps.sum()  # Doom's episodes end early
        rate = played / (time.perf_counter() - start)
        pool_rates[workers] = max(pool_rates[workers], rate)

  print(f'controller: {n} parameters (controller.inputs={config.controller.inputs}), '
        f'z {model.encoder.z_size}, h {model.seq.feature_size}; TensorFlow threads {threads} '
        f'(a worker of {_PARALLELISM.value})')
  print(f'real env, 1 process, {_REAL_ENVS.value} envs: {real:10,.0f} steps/s   '
        f'(env.render_scale={config.env.render_scale}, env.action_repeat='
        f'{config.env.action_repeat}; {"the run" if trained else "random"}\'s controller)')
  print(f'  its actions replayed, no model: {replayed:6,.0f} steps/s   V+M+C cost '
        f'{100 * (1 - real / replayed):.0f}% of the agent\'s time')
  print(f'  the same envs, random actions: {random_batch:7,.0f} steps/s')
  print(f'env alone, 1 env, random:     {alone:10,.0f} steps/s   agent / env alone: '
        f'{real / alone:.2f} (goal >= 0.9)')
  print(f'  the same, full-size frames:  {real_full:10,.0f} steps/s   drawing at '
        f'{config.env.render_scale}: {real / real_full:.2f}x')
  for p, rate in dreamt.items():
    note = ' (controller.dream_precision)' if p == precision else ''
    print(f'dream, batch {_DREAM_BATCH.value}, M in {p:8}: {rate:10,.0f} steps/s   '
          f'{rate / real:6.0f}x real{note} (goal >= 300x)')
  print(f'real-env pool, 1 worker:      {pool_rates[1]:10,.0f} steps/s')
  print(f'real-env pool, 2 workers:     {pool_rates[2]:10,.0f} steps/s   '
        f'{pool_rates[2] / pool_rates[1]:6.2f}x (goal >= 1.8x)')


class Recording(evaluation.Worker):
  """A worker that keeps the actions its agent took in the last batch it played."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.actions: list[np.ndarray] = []  # [steps] of [envs, action]: the last batch played

  def _world_actor(self, params: np.ndarray):
    act, self.actions = super()._world_actor(params), []

    def recorded(frames: np.ndarray, live: np.ndarray) -> np.ndarray:
      actions = act(frames, live)
      every = np.zeros((len(params),) + actions.shape[1:], actions.dtype)
      every[live] = actions
      self.actions.append(every)
      return actions
    return recorded


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
