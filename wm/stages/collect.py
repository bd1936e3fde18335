"""Stage collect: random-policy rollouts in parallel into one folder, safe for many processes and
SLURM jobs at once. With collect.policy=controller, a trained controller (of
collect.controller_run, exploring with collect.action_noise) plays them instead: the iterative
training's collection (wm/infra/iterate.py).

Rollout `i` (0 <= i < num_rollouts) has its own seed derived from (experiment seed, i), so the data
never depends on how the work was split. A job takes the indices `i % num_tasks == task_index`
(SLURM array tasks), skips rollouts already on disk, and claims each index before working on it,
so concurrent instances never do the same rollout twice; it waits for rollouts of its share that
others claimed, and takes them over when their holder died. Rerunning tops the folder up.

TensorBoard scalars in RUN/rollouts/tb, a point per rollout this job collects (step: its count of
its share done): data/rollout_return (the rollout's return) and data/steps_per_s (env steps per
second so far).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from typing import Iterator

import numpy as np
from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from wm import artifacts, envs, policies, rollouts
from wm.config import Config
from wm.infra import cli, fileio, runs, workers
from wm.infra.progress import Progress


@dataclasses.dataclass
class Result:
  index: int  # rollout index
  steps: int  # env steps taken (0 when skipped)
  seconds: float  # wall time spent on it
  skipped: bool = False  # already on disk or claimed by another process
  ret: float = 0.0  # the episode's return (sum of its rewards)


class Scalars:
  """TensorBoard scalars written without TensorFlow, which collection never imports: one event
  file of `folder`, in TensorBoard's record format (tensorboard's own RecordWriter)."""

  def __init__(self, folder: str):
    os.makedirs(folder, exist_ok=True)
    name = f'events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}'
    self._records = RecordWriter(open(os.path.join(folder, name), 'wb'))
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def scalar(self, tag: str, value: float, step: int) -> None:
    value = summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
    self._write(event_pb2.Event(wall_time=time.time(), step=step,
                                summary=summary_pb2.Summary(value=[value])))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def __enter__(self) -> 'Scalars':
    return self

  def __exit__(self, *exc) -> None:
    self._records.close()


def run_episode(env: envs.PixelEnv, policy: policies.Policy, seed: int,
                max_steps: int) -> dict[str, np.ndarray]:
  """Plays one episode and returns it in the rollout format of wm/rollouts.py."""
  frame = env.reset(seed=seed)
  policy.reset(seed)
  frames = np.empty((max_steps + 1, *frame.shape), np.uint8)
  actions = np.empty((max_steps, env.action_size), np.float32)
  rewards = np.empty(max_steps, np.float32)
  terminated = np.zeros(max_steps, np.bool_)
  truncated = np.zeros(max_steps, np.bool_)
  frames[0] = frame
  t = 0
  while t < max_steps:
    action = policy.act(frame).action
    frame, reward, term, trunc = env.step(action)
    actions[t], rewards[t], terminated[t], truncated[t] = action, reward, term, trunc
    t += 1
    frames[t] = frame
    if term or trunc:
      break
  if t == max_steps:
    truncated[t - 1] |= not terminated[t - 1]
  return {'frames': frames[:t + 1], 'actions': actions[:t], 'rewards': rewards[:t],
          'terminated': terminated[:t], 'truncated': truncated[:t], 'seed': np.int64(seed)}


def todo(folder: str, num_rollouts: int, task_index: int = 0, num_tasks: int = 1) -> list[int]:
  """This task's indices that are not on disk yet."""
  done = set(rollouts.list_indices(folder))
  return [i for i in range(task_index, num_rollouts, num_tasks) if i not in done]


class Worker:
  """Owns one environment and policy; collects the rollouts it is given by index."""

  def __init__(self, config: Config, folder: str):
    self.config, self.folder = config, folder
    self.env = envs.make(config.env)
    self.policy = make_policy(config, self.env.action_space)

  def collect(self, index: int) -> Result:
    path = rollouts.path_for(self.folder, index)
    start = time.perf_counter()
    with fileio.claim(path) as held:
      if not held or os.path.exists(path):
        return Result(index, 0, 0.0, skipped=True)
      seed = rollouts.rollout_seed(self.config.seed, index)
      rollout = run_episode(self.env, self.policy, seed, self.config.env.agent_steps())
      rollouts.save(path, rollout, self.config.collect.compress_level)
    return Result(index, len(rollout['actions']), time.perf_counter() - start,
                  ret=float(rollout['rewards'].sum()))


def make_policy(config: Config, action_space) -> policies.Policy:
  """collect.policy's policy: a random one, or a trained controller exploring with
  collect.action_noise (the iterative training's collection, which loads TensorFlow)."""
  if config.collect.policy != 'controller':
    return policies.make_random(config.collect, action_space)
  from wm import agent  # pylint: disable=import-outside-toplevel  (TensorFlow: only here)
  run = runs.Run(config.collect.controller_run)
  world = agent.WorldModel.load(run, config, action_space)
  params = artifacts.load_params(artifacts.controller_params_path(run), world.controller)
  return agent.Agent(world, params, noise=config.collect.action_noise)


def check_policy(config: Config) -> None:
  """Refuses collect.policy=controller without the trained run it names, before any work."""
  if config.collect.policy == 'controller':
    run = runs.Run(config.collect.controller_run)
    artifacts.require_world_model(run)
    artifacts.require_controller(run)


_WORKER: Worker | None = None


def _init_worker(config: Config, folder: str) -> None:
  global _WORKER
  _WORKER = Worker(config, folder)


def _collect(index: int) -> Result:
  return _WORKER.collect(index)


def collect(config: Config, folder: str, parallelism: int = 1, task_index: int = 0,
            num_tasks: int = 1, poll: float = 5.0, log=print) -> Iterator[Result]:
  """Collects this task's missing rollouts with `parallelism` processes, yielding each result.

  Rollouts claimed by other processes are waited for: they appear when their holder finishes, or
  their claim goes stale (its holder died: wm/fileio.claim) and this task collects them.
  """
  os.makedirs(folder, exist_ok=True)
  rollouts.stale_cleanup(folder)
  while indices := todo(folder, config.collect.num_rollouts, task_index, num_tasks):
    collected = 0
    for result in _collect_pass(config, folder, parallelism, indices):
      if not result.skipped:
        collected += 1
        yield result
    if not collected:
      holders = {fileio.claim_holder(rollouts.path_for(folder, i)) for i in indices} - {None}
      log(f'waiting for {len(indices)} rollouts claimed by other processes '
          f'({", ".join(sorted(holders)) or "finishing now"}); a dead holder\'s claim is taken '
          f'over after {fileio.LEASE_S:.0f}s')
      time.sleep(poll)


def _collect_pass(config: Config, folder: str, parallelism: int,
                  indices: list[int]) -> Iterator[Result]:
  if parallelism == 1:
    worker = Worker(config, folder)
    for index in indices:
      yield worker.collect(index)
    return
  with workers.WorkerPool(min(parallelism, len(indices)), _collect, _init_worker, (config, folder),
                          name='collect', task_timeout=episode_timeout(config),
                          describe=lambda i: f'rollout {i}') as pool:
    yield from pool.imap_unordered(indices)


def episode_timeout(config: Config) -> float:
  """Seconds after which a worker playing one episode counts as stuck: a minute to make the
  environment plus 0.1 s a frame, 15-300x the slowest environment measured (docs/reliability)."""
  return 60.0 + 0.1 * config.env.max_steps


def run(stage: cli.Stage, parallelism: int = 1, task_index: int = 0, num_tasks: int = 1) -> None:
  """The stage: this task's share of the rollouts, then DONE once all of them exist."""
  config = stage.config
  check_policy(config)
  facts = envs.check(config.env, seed=config.seed)
  logging.info('environment %s ok: %s', config.env.name, facts)
  total = len(range(task_index, config.collect.num_rollouts, num_tasks))
  missing = todo(stage.dir, config.collect.num_rollouts, task_index, num_tasks)
  progress = Progress('collect rollouts', total, folder=stage.dir)
  done, steps, collected = total - len(missing), 0, 0
  progress.update(done, force=True)
  with Scalars(os.path.join(stage.dir, 'tb')) if missing else contextlib.nullcontext() as tb:
    for result in collect(config, stage.dir, parallelism, task_index, num_tasks,
                          log=logging.info):
      done, steps, collected = done + 1, steps + result.steps, collected + 1
      progress.update(done, env_steps=steps)
      tb.scalar('data/rollout_return', result.ret, done)
      tb.scalar('data/steps_per_s', steps / max(progress.elapsed(), 1e-9), done)
  have = len(rollouts.list_indices(stage.dir))
  logging.info('collected %d rollouts here (%d steps, %.0f steps/s); %d written by other '
               'processes meanwhile', collected, steps, steps / max(progress.elapsed(), 1e-9),
               len(missing) - collected)
  logging.info('%d of %d rollouts in %s', have, config.collect.num_rollouts, stage.dir)
  if have >= config.collect.num_rollouts:
    stage.run.mark_done('collect', rollouts=have)
