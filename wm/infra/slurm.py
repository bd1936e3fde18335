"""Talking to SLURM: what each stage's job needs, what a partition offers, submitting, waiting.

The resources of a stage live in the `#SBATCH` lines of `slurm/<stage>.sbatch`; `SLURM_STAGES`
says only how the pipeline submits it (as a job array, on the GPU partition, as MPI ranks).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time

from wm.config import REPO_ROOT
from wm.errors import UserError

SLURM_DIR = os.path.join(REPO_ROOT, 'slurm')


@dataclasses.dataclass
class SlurmStage:
  array: str | None = None  # submitter option with the array size (None: one job)
  gpu: bool = False  # on the GPU partition, with GPUs when the partition has them
  ranks: bool = False  # --ntasks from --controller_ranks (srun -n N MPI ranks)
  nodes: bool = False  # --nodes from --train_nodes (a worker per node, wm/distribute.py)


SLURM_STAGES = {
    'collect': SlurmStage(array='collect_tasks'),
    'shard': SlurmStage(array='shard_tasks'),
    'vae': SlurmStage(gpu=True, nodes=True),
    'encode': SlurmStage(array='encode_tasks', gpu=True),
    'seq': SlurmStage(gpu=True, nodes=True),
    'controller': SlurmStage(ranks=True),
    'evaluate': SlurmStage(),
    'play': SlurmStage(),
    'iterate': SlurmStage(),  # between rounds of iterative training: prepares the next one
}

# Job states after which a job will not run again.
FINAL_STATES = {'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY',
                'BOOT_FAIL', 'DEADLINE', 'PREEMPTED', 'GONE'}
# Reasons a pending job gives when no node of its partition can ever run it as asked.
NEVER_RUNS = {'PartitionConfig', 'PartitionNodeLimit', 'PartitionTimeLimit', 'BadConstraints',
              'InvalidAccount', 'InvalidQOS'}


def sbatch_script(stage: str) -> str:
  path = os.path.join(SLURM_DIR, f'{stage}.sbatch')
  if not os.path.exists(path):
    raise UserError(f'stage {stage!r} has no sbatch script: expected {path}')
  return path


def header_options(path: str) -> dict[str, str]:
  """The `#SBATCH --name=value` lines of a script as {name: value}."""
  options = {}
  with open(path) as f:
    for line in f:
      m = re.match(r'#SBATCH\s+--([\w-]+)(?:[= ](\S+))?', line)
      if m:
        options[m.group(1)] = m.group(2) or ''
  return options


def mem_mb(text: str) -> int:
  """SLURM memory sizes ('8G', '512M', '1T', '4000') in MB."""
  m = re.fullmatch(r'(\d+)([KMGT]?)B?', text.upper())
  if not m:
    raise UserError(f'cannot read the memory size {text!r}; use e.g. 8G or 4000M')
  scale = {'K': 1 / 1024, '': 1, 'M': 1, 'G': 1024, 'T': 1024**2}[m.group(2)]
  return int(int(m.group(1)) * scale)


def output(argv: list[str]) -> str | None:
  """A SLURM command's stdout, or None when it is missing, fails or takes over 30 s."""
  try:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return result.stdout if result.returncode == 0 else None


@dataclasses.dataclass
class Partition:
  cpus: int  # CPUs of its largest node
  mem_mb: int  # memory of its largest node
  total_cpus: int  # CPUs of all its nodes
  gpus: int  # GPUs of its largest node


def partition_info(name: str | None) -> Partition | None:
  """What a partition (default: the default one) offers, or None when sinfo cannot tell."""
  argv = ['sinfo', '-h', '-N', '-o', '%N %c %m %G %P'] + (['-p', name] if name else [])
  rows = [line.split() for line in (output(argv) or '').splitlines() if line.strip()]
  if not name:  # the default partition, marked with '*'
    rows = [r for r in rows if r[4].endswith('*')]
  # A node is listed once per partition it belongs to.
  rows = list({r[0]: r for r in rows}.values())
  if not rows:
    return None
  gpus = [sum(int(n) for n in re.findall(r'gpu(?::[\w-]+)?:(\d+)', r[3])) for r in rows]
  return Partition(cpus=max(int(r[1].rstrip('+')) for r in rows),
                   mem_mb=max(int(r[2].rstrip('+')) for r in rows),
                   total_cpus=sum(int(r[1].rstrip('+')) for r in rows), gpus=max(gpus))


def fit(options: dict[str, str], partition: Partition | None) -> tuple[dict[str, str], list[str]]:
  """Shrinks CPUs, memory and tasks that no node of the partition has; returns notes on it."""
  if partition is None:
    return options, []
  options, notes = dict(options), []
  cpus = int(options.get('cpus-per-task', '1'))
  if cpus > partition.cpus:
    options['cpus-per-task'] = str(partition.cpus)
    notes.append(f'cpus-per-task {cpus} -> {partition.cpus}')
  if 'mem' in options and mem_mb(options['mem']) > partition.mem_mb:
    notes.append(f'mem {options["mem"]} -> {partition.mem_mb}M')
    options['mem'] = f'{partition.mem_mb}M'
  ntasks = int(options.get('ntasks', '1'))
  most = max(1, partition.total_cpus // int(options.get('cpus-per-task', '1')))
  if ntasks > most:
    options['ntasks'] = str(most)
    notes.append(f'ntasks {ntasks} -> {most}')
  return options, notes


def submit(argv: list[str], env: dict[str, str]) -> str:
  """Runs `sbatch --parsable ...` and returns the job id."""
  try:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
  except FileNotFoundError:
    raise UserError('sbatch is not on PATH: run this on a SLURM login node, or start the local '
                    'cluster with slurm/local_cluster.sh') from None
  if result.returncode != 0:
    raise UserError(f'sbatch refused the job (exit {result.returncode}): '
                    f'{result.stderr.strip()}\ncommand: {" ".join(argv)}')
  return result.stdout.strip().split(';')[0]


def job_states(job_id: str) -> dict[str, str]:
  """{job or array task id: state} for one job id (an array id gives all its tasks)."""
  out = output(['scontrol', '-o', 'show', 'job', job_id]) or ''
  states = {}
  for line in out.splitlines():
    fields = dict(re.findall(r'(\w+)=(\S*)', line))
    task = fields.get('ArrayTaskId')
    name = f'{fields.get("ArrayJobId")}_{task}' if task and task != 'N/A' else fields.get('JobId')
    state, reason = fields.get('JobState', 'UNKNOWN'), fields.get('Reason', '')
    states[name] = f'{state}:{reason}' if state == 'PENDING' and reason in NEVER_RUNS else state
  return states


def is_final(state: str) -> bool:
  return state in FINAL_STATES or state.startswith('PENDING:')


def wait(job_ids: list[str], poll_s: float = 2.0, log=print,
         timeout_s: float | None = None) -> dict[str, str]:
  """Waits until every job (and array task) is in a final state; returns the states."""
  last = None
  deadline = time.time() + timeout_s if timeout_s else None
  while True:
    states = {}
    for job_id in job_ids:
      # A job the controller no longer knows (past MinJobAge) is over: 'GONE'.
      states.update(job_states(job_id) or {job_id: 'GONE'})
    # A pending array shows as one record with a range of task ids ("12_[0-3]"): not final.
    if states and all(is_final(s) for s in states.values()):
      return states
    summary = ', '.join(f'{k} {v}' for k, v in sorted(states.items()))
    if deadline and time.time() > deadline:
      raise TimeoutError(f'jobs still not finished after {timeout_s}s: {summary}')
    if summary != last:
      log(f'waiting: {summary}')
      last = summary
    time.sleep(poll_s)
