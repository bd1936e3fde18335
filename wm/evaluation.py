"""Real-environment episodes for many controllers at once, on one machine or across MPI ranks.

A job is (controller parameters, episode seed); its result is the episode's `Outcomes`: its
return, its agent steps, and whether the environment ended it (CarRacing: the lap finished, or
the car left the playfield; Doom: the player died) rather than its time limit or the patience
below. An `Evaluator` maps jobs [J] to outcomes [J] (`play`), or to returns [J] (`evaluate`).
With `patience` > 0 (training only: `controller.train_patience`) an episode ends early once that
many agent steps in a row brought no positive reward: a car off the track, or standing still,
earns nothing more in CarRacing but costs a whole episode of steps. Evaluations always play
whole episodes.

The jobs are cut into contiguous chunks, one per worker; a `Worker` owns V, M and a batch of
environments and plays its chunk with one fused V+M+C step per time step for the episodes of the
batch still playing (wm/agent.py). The backends differ only in who runs the chunks:

    InProcess   the calling process (parallelism 1)
    Pool        `parallelism` spawned processes on this machine
    Mpi         the MPI ranks (rank 0 included); rank 0 calls evaluate(), the others serve()

Every backend with the same number of workers cuts the same chunks, so a fixed seed gives
the same returns from a pool of N processes and from N MPI ranks. `params=None` plays the
uniformly random policy (evaluate.py's baseline).
"""

from __future__ import annotations

import abc
import dataclasses
import os
import signal

import numpy as np
import tensorflow as tf

from wm import envs, policies
from wm.infra import runs, workers
from wm.agent import WorldModel
from wm.config import Config

MAX_BATCH = 64  # environments a worker steps together at most


@dataclasses.dataclass
class Outcomes:
  """Real episodes' results: row j is job j's."""
  returns: np.ndarray  # [J] float: the undiscounted return
  steps: np.ndarray  # [J] int: agent steps played (env.action_repeat frames each)
  ended: np.ndarray  # [J] bool: the environment ended it (terminated), not a limit

  def to_array(self) -> np.ndarray:
    """[J, 3] float64: what crosses process boundaries (a pool's pipe, MPI's Gatherv)."""
    return np.stack([self.returns, self.steps, self.ended], axis=1).astype(np.float64)

  @classmethod
  def from_array(cls, table: np.ndarray) -> 'Outcomes':
    table = np.asarray(table, np.float64).reshape(-1, 3)
    return cls(table[:, 0], table[:, 1].astype(np.int64), table[:, 2] > 0.5)


def chunks(num_jobs: int, workers: int) -> list[np.ndarray]:
  """Contiguous job indices per worker (the same cut for every backend)."""
  return np.array_split(np.arange(num_jobs), workers)


class Worker:
  """Owns environments and (loaded on first use) V and M; plays chunks of jobs."""

  def __init__(self, config: Config, run_root: str):
    self.config, self.run = config, runs.Run(run_root)
    self.envs: list[envs.PixelEnv] = []
    self._world = None
    self.steps = 0  # env steps taken so far

  @property
  def world(self) -> WorldModel:
    if self._world is None:
      self._world = WorldModel.load(self.run, self.config)
    return self._world

  def play(self, params: np.ndarray | None, seeds: np.ndarray, patience: int = 0) -> Outcomes:
    table = np.zeros((len(seeds), 3))
    for start in range(0, len(seeds), MAX_BATCH):
      part = slice(start, start + MAX_BATCH)
      batch = None if params is None else params[part]
      table[part] = self._play(batch, seeds[part], patience).to_array()
    return Outcomes.from_array(table)

  def evaluate(self, params: np.ndarray | None, seeds: np.ndarray, patience: int = 0) -> np.ndarray:
    return self.play(params, seeds, patience).returns

  def _play(self, params: np.ndarray | None, seeds: np.ndarray, patience: int) -> Outcomes:
    count = len(seeds)
    while len(self.envs) < count:
      self.envs.append(envs.make(self.config.env))
    batch = self.envs[:count]
    frames = np.stack([env.reset(seed=int(s)) for env, s in zip(batch, seeds)])
    returns, alive = np.zeros(count), np.ones(count, bool)
    steps, ended = np.zeros(count, np.int64), np.zeros(count, bool)
    idle = np.zeros(count, int)  # agent steps since the last positive reward
    act = self._random_actor(batch, seeds) if params is None else self._world_actor(params)
    for _ in range(self.config.env.agent_steps()):
      live = np.flatnonzero(alive)
      for i, action in zip(live, act(frames, live)):
        frames[i], reward, terminated, truncated = batch[i].step(action)
        returns[i] += reward
        steps[i] += 1
        ended[i] = terminated
        idle[i] = 0 if reward > 0 else idle[i] + 1
        alive[i] = not (terminated or truncated or (patience and idle[i] >= patience))
        self.steps += 1
      if not alive.any():
        break
    return Outcomes(returns, steps, ended)

  def _world_actor(self, params: np.ndarray):
    """act(frames [count, ...], live [L] rows) -> the live rows' actions [L]. An ended episode's
    row leaves the batch (its state and parameters with it): V+M+C steps only what still plays."""
    world = self.world
    held = {'rows': np.arange(len(params)), 'params': tf.constant(params, tf.float32),
            'state': world.seq.initial_state(len(params))}

    def act(frames: np.ndarray, live: np.ndarray) -> np.ndarray:
      if len(live) < len(held['rows']):
        keep = np.searchsorted(held['rows'], live)
        held['params'] = tf.gather(held['params'], keep)
        held['state'] = tf.nest.map_structure(lambda x: tf.gather(x, keep), held['state'])
        held['rows'] = live
      action, held['state'] = world.act(tf.constant(frames[live]), held['state'], held['params'])
      return action.numpy()
    return act

  def _random_actor(self, batch: list[envs.PixelEnv], seeds: np.ndarray):
    agents = [policies.UniformPolicy(env.action_space) for env in batch]
    for agent, seed in zip(agents, seeds):
      agent.reset(int(seed))
    return lambda frames, live: [agents[i].act(frames[i]).action for i in live]


class Evaluator(abc.ABC):
  """Maps jobs (params [J, n] or None, seeds [J]) to episode outcomes [J]."""

  workers: int

  @abc.abstractmethod
  def play(self, params: np.ndarray | None, seeds: np.ndarray, patience: int = 0) -> Outcomes:
    ...

  def evaluate(self, params: np.ndarray | None, seeds: np.ndarray, patience: int = 0) -> np.ndarray:
    """The episodes' returns [J]."""
    return self.play(params, seeds, patience).returns

  def close(self) -> None:
    pass

  def __enter__(self) -> 'Evaluator':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class InProcess(Evaluator):
  def __init__(self, config: Config, run_root: str):
    self.worker, self.workers = Worker(config, run_root), 1

  def play(self, params, seeds, patience=0):
    return self.worker.play(params, np.asarray(seeds), patience)


_WORKER: Worker | None = None


def worker_threads(parallelism: int) -> int:
  """TensorFlow threads for each of `parallelism` workers sharing this machine's cores."""
  return max(1, (os.cpu_count() or 1) // parallelism)


def _init_pool_worker(config: Config, run_root: str, threads: int, preload: bool) -> None:
  global _WORKER
  # The parent handles preemption signals (SLURM signals the whole process group).
  for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
    signal.signal(sig, signal.SIG_IGN)
  # N workers share the cores: TF's own thread pools would otherwise oversubscribe them.
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  _WORKER = Worker(config, run_root)
  if preload:  # load V and M now, so every worker is ready when the first jobs arrive
    _WORKER.world  # pylint: disable=pointless-statement


def _pool_chunk(job: tuple[np.ndarray | None, np.ndarray, int]) -> np.ndarray:
  return _WORKER.play(*job).to_array()


class Pool(Evaluator):
  def __init__(self, config: Config, run_root: str, parallelism: int, preload: bool = True):
    self.workers = parallelism
    threads = worker_threads(parallelism)
    self.max_frames = config.env.max_steps
    self.pool = workers.WorkerPool(parallelism, _pool_chunk, _init_pool_worker,
                                   (config, run_root, threads, preload), name='evaluation',
                                   describe=_describe_chunk)

  def play(self, params, seeds, patience=0):
    seeds = np.asarray(seeds)
    jobs = [(None if params is None else params[c], seeds[c], patience)
            for c in chunks(len(seeds), self.workers)]
    # A chunk is stuck when it plays slower than 1 frame/s per episode (measured: >100).
    self.pool.task_timeout = 120.0 + max(len(j[1]) for j in jobs) * self.max_frames
    return Outcomes.from_array(np.concatenate(self.pool.map(jobs)))

  def close(self) -> None:
    self.pool.close()


def _describe_chunk(job: tuple[np.ndarray | None, np.ndarray, int]) -> str:
  seeds = job[1]
  return f'{len(seeds)} episodes (seeds {seeds[0]}..{seeds[-1]})' if len(seeds) else 'no episodes'


# ---------------------------------------------------------------------------- MPI

_EVAL, _STOP = 1, 0


class Mpi(Evaluator):
  """Rank 0's side: broadcasts the jobs, plays its own chunk, gathers everyone's outcomes.

  Messages are numpy buffers (Bcast/Gatherv), never pickled objects.
  """

  def __init__(self, comm, config: Config, run_root: str):
    self.comm, self.workers = comm, comm.Get_size()
    self.worker = Worker(config, run_root)

  def play(self, params, seeds, patience=0):
    seeds = np.ascontiguousarray(seeds, np.int64)
    if params is not None:
      params = np.ascontiguousarray(params, np.float64)
    width = 0 if params is None else params.shape[1]
    self.comm.Bcast(np.array([_EVAL, len(seeds), width, patience], np.int64), root=0)
    return _mpi_round(self.comm, self.worker, params, seeds, patience)

  def close(self) -> None:
    self.comm.Bcast(np.array([_STOP, 0, 0, 0], np.int64), root=0)


def serve(comm, config: Config, run_root: str) -> None:
  """A rank > 0: plays its chunk of every round rank 0 broadcasts, until told to stop."""
  worker = Worker(config, run_root)
  while True:
    header = np.zeros(4, np.int64)  # what, jobs, parameter width, patience
    comm.Bcast(header, root=0)
    if header[0] == _STOP:
      return
    params = None if header[2] == 0 else np.zeros((header[1], header[2]))
    _mpi_round(comm, worker, params, np.zeros(header[1], np.int64), int(header[3]))


def _mpi_round(comm, worker: Worker, params, seeds, patience: int) -> Outcomes | None:
  from mpi4py import MPI  # pylint: disable=import-outside-toplevel
  if params is not None:
    comm.Bcast(params, root=0)
  comm.Bcast(seeds, root=0)
  parts = chunks(len(seeds), comm.Get_size())
  mine = parts[comm.Get_rank()]
  table = worker.play(None if params is None else params[mine], seeds[mine], patience).to_array()
  counts = [3 * len(p) for p in parts]  # 3 columns a job: Outcomes.to_array
  gathered = np.zeros(3 * len(seeds)) if comm.Get_rank() == 0 else None
  comm.Gatherv(np.ascontiguousarray(table).ravel(),
               [gathered, counts, np.cumsum([0] + counts[:-1]), MPI.DOUBLE], root=0)
  return None if gathered is None else Outcomes.from_array(gathered)


def make(config: Config, run_root: str, parallelism: int, comm=None,
         preload: bool = True) -> Evaluator:
  """The MPI evaluator when `comm` has several ranks, else a pool (or this process).
  `preload=False` (the random baseline) never loads V and M."""
  if comm is not None and comm.Get_size() > 1:
    return Mpi(comm, config, run_root)
  if parallelism > 1:
    return Pool(config, run_root, parallelism, preload)
  return InProcess(config, run_root)
