"""How V and M spread over devices and workers: the tf.distribute strategy the config's
`distribute` section asks for, created before any other TensorFlow op of the process.

    one_device    one process, one device (its first GPU, else the CPU): no strategy at all
    mirrored      one process, several devices: its GPUs, or the CPU split into
                  distribute.cpu_replicas logical devices (to test and to measure the overhead)
    multi_worker  several processes, on one node or many, each mirroring over its own GPUs; the
                  workers come from srun (SlurmClusterResolver) or from TF_CONFIG
    auto          multi_worker inside an srun step of several tasks or with TF_CONFIG set,
                  mirrored with several GPUs or cpu_replicas > 1, else one_device

The batch size is the global batch. Each of the R replicas computes its loss on its part of the
batch scaled by its share of the batch (`Distribution.share`), so the gradients summed over the
replicas are those of the global batch's mean, and the same global batch gives the same step on
any number of replicas (tests/test_distribute.py): the learning rate means the same at any
world size, and a checkpoint resumes on another one.

The chief (worker 0) alone writes checkpoints, TensorBoard, metrics, progress, the export and
DONE, and validates; the other workers save their part of a checkpoint to a temporary folder
(saving may be collective) and delete it. Each worker reads its own part of the data
(`InputShard`). A preemption signal reaches the workers at different steps, so the train step
sums every worker's stop flag and all stop after the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tempfile
from typing import Any, Callable

import tensorflow as tf
from absl import logging

from wm.config import DistributeConfig
from wm.errors import ConfigError, DataError, UserError
from wm.infra import cpu_kernels, fileio

KINDS = ('auto', 'one_device', 'mirrored', 'multi_worker')
SUM = tf.distribute.ReduceOp.SUM
LOST_WORDS = ('unhealthy', 'heartbeat', 'timed out', 'timeout', 'deadline', 'connect')


class WorkerLostError(UserError):
  """Another worker of a multi-worker run died; every worker must be started again."""


@dataclasses.dataclass(frozen=True)
class InputShard:
  """The part of the data one input pipeline reads: pipeline `index` of `count`, each yielding
  `batch_size` examples per replica it feeds."""
  index: int
  count: int
  batch_size: int

  def files_or_records(self, paths: list[str]) -> tuple[list[str], int, int]:
    """(paths this pipeline reads, record shard index, record shard count).

    Whole files when there are at least as many as pipelines (tf.data's FILE policy, which
    fails with fewer files than workers); else every file, keeping every count-th rollout (the
    DATA policy: each pipeline reads all, decodes its own). A single pipeline reads everything.
    """
    if self.count == 1:
      return paths, 0, 1
    if len(paths) >= self.count:
      return paths[self.index::self.count], 0, 1
    return paths, self.index, self.count


@dataclasses.dataclass
class Distribution:
  """A created strategy and where this process stands in it."""
  kind: str  # one_device | mirrored | multi_worker (auto resolved)
  strategy: tf.distribute.Strategy
  worker: int = 0  # this process's index among the workers
  workers: int = 1

  @property
  def chief(self) -> bool:
    return self.worker == 0

  @property
  def replicas(self) -> int:
    return self.strategy.num_replicas_in_sync

  def describe(self) -> dict[str, Any]:
    """What the snapshot and DONE record."""
    devices = [d.name for d in tf.config.list_logical_devices()
               if d.device_type in ('GPU', 'CPU')]
    return {'strategy': self.kind, 'workers': self.workers, 'replicas': self.replicas,
            'worker_devices': devices}

  def scope(self):
    """Variables (model, optimizer, step counter) are made under this."""
    return self.strategy.scope()

  def check_batch(self, batch_size: int, field: str) -> int:
    """The per-replica batch of the global `batch_size`; refuses one that does not divide."""
    if batch_size % self.replicas:
      raise ConfigError(
          f'config field {field}={batch_size} is the global batch and must divide by the '
          f'{self.replicas} replicas of the {self.kind} strategy; set it to a multiple of '
          f'{self.replicas}')
    return batch_size // self.replicas

  def check_rollouts(self, count: int, folder: str) -> None:
    """Refuses training data with fewer rollouts than workers: each worker reads its own."""
    if count < self.workers:
      raise DataError(f'{folder} holds {count} rollouts for {self.workers} workers, and each '
                      'worker reads rollouts of its own: collect more (collect.num_rollouts) '
                      'or start fewer workers')

  def datasets(self, make: Callable[[InputShard], tf.data.Dataset], batch_size: int, field: str):
    """The training batches: `make(shard)` builds one input pipeline of per-replica batches."""
    per_replica = self.check_batch(batch_size, field)
    if self.kind == 'one_device':
      return make(InputShard(0, 1, per_replica))
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return self.strategy.distribute_datasets_from_function(
        lambda context: make(InputShard(context.input_pipeline_id,
                                        context.num_input_pipelines, per_replica)), options)

  def global_batches(self, data: tf.data.Dataset):
    """Distributes a dataset of global batches exactly: replica r of R gets rows
    [r B/R, (r+1) B/R) of each, so any world size steps on the same global batches (tests, and
    measurements that compare world sizes)."""
    if self.kind == 'one_device':
      return data
    replicas, workers = self.replicas, self.workers

    def make(context: tf.distribute.InputContext) -> tf.data.Dataset:
      local = replicas // workers
      first = context.input_pipeline_id * local

      def parts(batch):
        size = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0] // replicas
        return tf.data.Dataset.range(first, first + local).map(
            lambda r: tf.nest.map_structure(lambda x: x[r * size:(r + 1) * size], batch))

      return data.flat_map(parts)

    return self.strategy.distribute_datasets_from_function(make)

  def step(self, replica_fn: Callable[..., dict[str, tf.Tensor]]):
    """A tf.function running `replica_fn` on every replica and summing each output over them
    (replica_fn returns its shares: summed, they are the global values). Traced for batches of
    any length (seq.bucket_steps varies it): what is compiled by shape is compiled inside."""
    if self.kind == 'one_device':
      return tf.function(replica_fn, reduce_retracing=True)

    def replica(*args):  # identity: an input handed back is a per-replica value too
      return {k: tf.identity(v) for k, v in replica_fn(*args).items()}

    @tf.function(reduce_retracing=True)
    def step(*args):
      outputs = self.strategy.run(replica, args=args)
      return {k: self.strategy.reduce(SUM, v, axis=None) for k, v in outputs.items()}

    return step

  @contextlib.contextmanager
  def workers_alive(self, resume_note: Callable[[], str]):
    """Turns the error a collective op raises when another worker is gone (dead, killed: the
    coordination service misses its heartbeats, or distribute.collective_timeout_s passes)
    into a WorkerLostError that says how to resume."""
    try:
      yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.AbortedError) as e:
      if self.kind != 'multi_worker':
        raise
      lines = [line.strip() for line in (e.message or str(e)).splitlines() if line.strip()]
      telling = [line for line in lines if any(word in line.lower() for word in LOST_WORDS)]
      reason = (telling or lines or [''])[0][:300]
      raise WorkerLostError(
          f'worker {self.worker} of {self.workers} stopped because another worker is gone '
          f'({type(e).__name__}: {reason}). Find why in that worker\'s log, then, on every '
          f'worker, {resume_note()}') from None

  def save_part(self, checkpoint: tf.train.Checkpoint, directory: str) -> None:
    """A non-chief worker's part of a checkpoint save into `directory`: written to a scratch
    folder and deleted. The folder's name is fixed for this worker and directory, so what a
    worker killed in the middle of a save left behind goes at its next save."""
    folder = os.path.join(tempfile.gettempdir(), part_folder_name(self.worker, directory))
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    try:
      checkpoint.write(os.path.join(folder, 'ckpt'))
    finally:
      shutil.rmtree(folder, ignore_errors=True)


def part_folder_name(worker: int, directory: str) -> str:
  """The scratch folder (under the temp dir) a non-chief worker writes its part of a checkpoint
  save into `directory` to."""
  key = hashlib.sha1(os.path.abspath(directory).encode()).hexdigest()[:12]
  return f'wm-worker{worker}-ckpt-{key}'


def one_device() -> Distribution:
  """No strategy: today's single-device path."""
  return Distribution('one_device', tf.distribute.get_strategy())


def replica_share(count: tf.Tensor, total: tf.Tensor | None = None) -> tf.Tensor:
  """This replica's share of a global mean over examples: its `count` over the count summed over
  every replica (1 on one device), `total` when the caller has summed it already."""
  count = tf.cast(count, tf.float32)
  return count / tf.maximum(replica_sum(count) if total is None else total, 1.0)


def replica_sum(value: tf.Tensor) -> tf.Tensor:
  """`value` summed over every replica (itself on one device)."""
  return tf.distribute.get_replica_context().all_reduce(SUM, tf.cast(value, tf.float32))


def replica_first_row(local_size: tf.Tensor) -> tf.Tensor:
  """The first row of this replica's part of a global batch (0 on one device)."""
  replica = tf.distribute.get_replica_context().replica_id_in_sync_group
  return tf.cast(replica, tf.int32) * tf.cast(local_size, tf.int32)


def record(stage, dist: Distribution, precision: dict[str, Any]) -> dict[str, Any]:
  """Writes what the stage computes on (strategy, devices, precision, CPU kernels) into its
  snapshot as device.json (the chief's) and returns it for DONE."""
  device = {**dist.describe(), 'precision': precision, 'cpu_kernels': cpu_kernels.in_use()}
  folder = os.path.join(stage.dir, 'snapshot')
  if dist.chief and os.path.isdir(folder):
    fileio.write_json(os.path.join(folder, 'device.json'), device)
  logging.info('computing on %s', json.dumps(device))
  return device


# ---------------------------------------------------------------------------- creating it


def in_srun_step() -> bool:
  """Whether this process is a task of an srun step of several tasks."""
  return int(os.environ.get('SLURM_STEP_NUM_TASKS', '1') or 1) > 1 and 'SLURM_PROCID' in os.environ


def resolve_kind(cfg: DistributeConfig) -> str:
  if cfg.strategy != 'auto':
    return cfg.strategy
  if in_srun_step() or os.environ.get('TF_CONFIG'):
    return 'multi_worker'
  gpus = len(tf.config.list_physical_devices('GPU'))
  return 'mirrored' if (cfg.gpus or gpus) > 1 or cfg.cpu_replicas > 1 else 'one_device'


def create(cfg: DistributeConfig) -> Distribution:
  """The strategy `cfg` asks for. Call it before any other TensorFlow op of the process (the
  collective ops of a multi-worker strategy can be configured at start-up only)."""
  kind = resolve_kind(cfg)
  if kind != 'multi_worker' and cfg.workers > 1:
    raise ConfigError(f'config field distribute.workers={cfg.workers} asks for several workers '
                      f'but the strategy is {kind}; set distribute.strategy=multi_worker and '
                      'start the workers with srun (or TF_CONFIG)')
  if kind == 'one_device':
    return one_device()
  if kind == 'mirrored':
    return Distribution('mirrored', tf.distribute.MirroredStrategy(local_devices(cfg)))
  return multi_worker(cfg)


def local_devices(cfg: DistributeConfig) -> list[str]:
  """The devices a mirrored strategy of this process mirrors over."""
  gpus = tf.config.list_physical_devices('GPU')
  if cfg.gpus > len(gpus):
    raise ConfigError(f'config field distribute.gpus={cfg.gpus} but this process sees '
                      f'{len(gpus)} GPU(s) (CUDA_VISIBLE_DEVICES='
                      f'{os.environ.get("CUDA_VISIBLE_DEVICES", "unset")}); ask SLURM for them '
                      '(--gpus-per-node) or lower distribute.gpus')
  if gpus:
    count = cfg.gpus or len(gpus)
    if count < 2 and cfg.cpu_replicas <= 1:
      raise no_devices(cfg, f'{count} GPU')
    return [f'/gpu:{i}' for i in range(count)]
  if cfg.cpu_replicas <= 1:
    raise no_devices(cfg, 'no GPU')
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * cfg.cpu_replicas)
  return [f'/cpu:{i}' for i in range(cfg.cpu_replicas)]


def no_devices(cfg: DistributeConfig, found: str) -> ConfigError:
  return ConfigError(
      f'config field distribute.strategy={cfg.strategy} mirrors over several devices, but this '
      f'process has {found}; use distribute.strategy=one_device, run on a node with several GPUs, '
      'or set distribute.cpu_replicas=2 to mirror over CPU logical devices')


def multi_worker(cfg: DistributeConfig) -> Distribution:
  """A MultiWorkerMirroredStrategy over srun's tasks or TF_CONFIG's workers."""
  resolver = cluster_resolver(cfg)
  spec = resolver.cluster_spec().as_dict()
  workers = len(spec.get('worker', []))
  if workers < 1 or resolver.task_type != 'worker':
    raise ConfigError(f'distribute.strategy=multi_worker needs a cluster of workers; found '
                      f'{json.dumps(spec)} with this process as {resolver.task_type!r}')
  if cfg.workers and cfg.workers != workers:
    raise ConfigError(f'config field distribute.workers={cfg.workers} but {workers} workers '
                      f'were started ({where_workers_come_from()}); start {cfg.workers} '
                      '(srun -n / --nodes) or set distribute.workers=0 to take what is started')
  options = tf.distribute.experimental.CommunicationOptions(
      timeout_seconds=cfg.collective_timeout_s or None)
  strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                       communication_options=options)
  index = int(resolver.task_id)
  logging.info('worker %d of %d (%s), %d replicas in sync', index, workers,
               where_workers_come_from(), strategy.num_replicas_in_sync)
  return Distribution('multi_worker', strategy, worker=index, workers=workers)


def where_workers_come_from() -> str:
  if in_srun_step():
    return f'srun step of {os.environ["SLURM_STEP_NUM_TASKS"]} tasks'
  return 'TF_CONFIG' if os.environ.get('TF_CONFIG') else 'one process'


def localhost_tf_configs(count: int) -> list[str]:
  """TF_CONFIG values for `count` workers on this machine, on ports free now (tests and
  benchmarks; worker i runs with the i-th value in its environment)."""
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  workers = [f'localhost:{s.getsockname()[1]}' for s in sockets]
  for s in sockets:
    s.close()
  return [json.dumps({'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': i}})
          for i in range(count)]


def cluster_resolver(cfg: DistributeConfig):
  """SLURM's when this process is an srun task of several, else TF_CONFIG's."""
  resolvers = tf.distribute.cluster_resolver
  if in_srun_step():
    gpus = len(tf.config.list_physical_devices('GPU'))
    port = cfg.port or 20000 + int(os.environ.get('SLURM_JOB_ID', '0')) % 20000
    # SlurmClusterResolver reads the step's nodes, tasks and this task's rank. Its GPU
    # bookkeeping needs a GPU per task (on CPU nodes it fails) and would set
    # CUDA_VISIBLE_DEVICES after TensorFlow found the GPUs: each task keeps those SLURM gave it,
    # and the strategy is told how many there are.
    per_task, tasks = max(gpus, 1), int(os.environ['SLURM_STEP_NUM_TASKS'])
    slurm = resolvers.SlurmClusterResolver(port_base=port, gpus_per_node=per_task * tasks,
                                           gpus_per_task=per_task, auto_set_gpu=False)
    spec = slurm.cluster_spec()
    return resolvers.SimpleClusterResolver(spec, task_type=slurm.task_type,
                                           task_id=slurm.task_id, rpc_layer='grpc',
                                           num_accelerators={'GPU': gpus} if gpus else None)
  if os.environ.get('TF_CONFIG'):
    return resolvers.TFConfigClusterResolver()
  raise ConfigError('distribute.strategy=multi_worker needs its workers: start the stage with '
                    'srun -n N (or --nodes=N --ntasks-per-node=1), or set TF_CONFIG in each '
                    'worker\'s environment')
