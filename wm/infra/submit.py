"""Submits every stage of the pipeline to SLURM as a chain of jobs (slurm/submit_pipeline.sh).

    slurm/submit_pipeline.sh --run_dir=runs/paper --config=configs/carracing.py:paper \\
        [--partition=cpu --gpu_partition=gpu --account=ACC --collect_tasks=64] [--config.a.b=v]

Each stage of wm.infra.pipeline.STAGES without a DONE marker becomes a job of slurm/<stage>.sbatch
waiting for the previous one (`--dependency=afterok`, `--kill-on-invalid-dep=yes`: a failed stage
cancels everything after it). Array stages run as a job array, then as one short job without
--array that checks every share is there and marks the stage DONE. Job ids are printed and
appended to RUN/slurm_jobs.json; each job logs to RUN/logs/<stage>-<job>[_<task>].log.

With --iterate, the rounds of the paper's iterative training follow, as `python -m wm iterate`
runs them: round 0 is the run itself (collect to evaluate, no play); then for each round k of
iterate.iterations an iterate job (slurm/iterate.sbatch: the summary so far, round k's folder and
config) and round k's stages on RUN/iterations/<k>, logging to its logs/; a last iterate job
writes RUN/iterations/summary.md. The chain is one line of afterok dependencies throughout.

Resources: the #SBATCH lines of each sbatch script are the defaults; CPUs, memory and tasks that
no node of the partition has are shrunk to fit (so the same command works on a laptop's local
cluster). Every option below falls back to an environment variable (WM_PARTITION, ...), and
WM_SBATCH_<STAGE> (e.g. WM_SBATCH_VAE='--time=2:00:00 --mem=32G') adds sbatch options to one
stage, after --sbatch_args (all stages) and before --stage_sbatch=vae:'--mem=64G' flags.
"""

from __future__ import annotations

import os
import shlex
import sys
import time

from absl import app, flags

from wm.infra import cli, fileio, iterate, pipeline, runs, slurm
from wm.errors import UserError

_PARTITION = flags.DEFINE_string('partition', None, 'Partition of CPU stages [WM_PARTITION].')
_GPU_PARTITION = flags.DEFINE_string('gpu_partition', None, 'Partition of the training and '
                                     'encoding stages (default: --partition) [WM_GPU_PARTITION].')
_ACCOUNT = flags.DEFINE_string('account', None, 'Account charged [WM_ACCOUNT].')
_GPUS = flags.DEFINE_string('gpus', None, 'GPUs per node of the GPU stages; auto: 1 when the '
                            'GPU partition has GPUs, else 0 [WM_GPUS, default auto].')
_TRAIN_NODES = flags.DEFINE_integer('train_nodes', None, 'Nodes of the V and M jobs, a worker '
                                    'each (wm/distribute.py) [WM_TRAIN_NODES, default 1].')
_COLLECT_TASKS = flags.DEFINE_integer('collect_tasks', None, 'Collection array size '
                                      '[WM_COLLECT_TASKS, default 4].')
_SHARD_TASKS = flags.DEFINE_integer('shard_tasks', None, 'Sharding array size [WM_SHARD_TASKS, '
                                    'default 2].')
_ENCODE_TASKS = flags.DEFINE_integer('encode_tasks', None, 'Encoding array size (outer shards) '
                                     '[WM_ENCODE_TASKS, default 2].')
_RANKS = flags.DEFINE_integer('controller_ranks', None, 'Controller MPI ranks (srun -n) '
                              '[WM_CONTROLLER_RANKS, default: its sbatch script\'s --ntasks].')
_SBATCH_ARGS = flags.DEFINE_string('sbatch_args', None, 'Extra sbatch options for every job, '
                                   'e.g. "--qos=high --time=8:00:00" [WM_SBATCH_ARGS].')
_STAGE_SBATCH = flags.DEFINE_multi_string('stage_sbatch', [], 'STAGE:OPTIONS extra sbatch '
                                          'options for one stage, e.g. vae:"--mem=64G".')
_AFTER = flags.DEFINE_string('after', None, 'Job id the first stage waits for (afterok).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the sbatch commands, submit nothing.')
_WAIT = flags.DEFINE_bool('wait', False, 'Wait for every job to end; exit 1 unless all completed.')
_ITERATE = flags.DEFINE_bool('iterate', False, 'Submit the run as round 0 of iterative training '
                             'and its iterate.iterations rounds after it (wm/infra/iterate.py).')
_AGAIN = flags.DEFINE_bool('allow_active', False, 'Submit even while jobs of an earlier '
                           'submission to this run dir are still queued or running.')

_DEFAULTS = {'collect_tasks': 4, 'shard_tasks': 2, 'encode_tasks': 2, 'gpus': 'auto',
             'train_nodes': 1}
JOBS_FILE = 'slurm_jobs.json'


def setting(flag: flags.FlagHolder, env: str):
  """The flag when given, else the environment variable, else the default."""
  if flag.present:
    return flag.value
  if os.environ.get(env):
    value = os.environ[env]
    return int(value) if isinstance(_DEFAULTS.get(flag.name), int) else value
  return _DEFAULTS.get(flag.name)


def stage_extra(name: str) -> list[str]:
  extra = shlex.split(setting(_SBATCH_ARGS, 'WM_SBATCH_ARGS') or '')
  extra += shlex.split(os.environ.get(f'WM_SBATCH_{name.upper()}', ''))
  for item in _STAGE_SBATCH.value:
    stage, sep, options = item.partition(':')
    if not sep or stage not in slurm.SLURM_STAGES:
      raise UserError(f'--stage_sbatch={item!r}: expected STAGE:OPTIONS with STAGE one of '
                      f'{sorted(slurm.SLURM_STAGES)}')
    if stage == name:
      extra += shlex.split(options)
  return extra


def resources(spec: slurm.SlurmStage, script: str) -> tuple[list[str], list[str], int]:
  """sbatch options choosing partition, account, GPUs, tasks and fitting CPUs/memory; notes on
  what was fitted; GPUs per job."""
  partition = setting(_PARTITION, 'WM_PARTITION')
  if spec.gpu:
    partition = setting(_GPU_PARTITION, 'WM_GPU_PARTITION') or partition
  header = slurm.header_options(script)
  options = dict(header)
  if spec.ranks and setting(_RANKS, 'WM_CONTROLLER_RANKS'):
    options['ntasks'] = str(setting(_RANKS, 'WM_CONTROLLER_RANKS'))
  info = slurm.partition_info(partition) if not _DRY_RUN.value else None
  fitted, notes = slurm.fit(options, info)
  argv = [f'--{k}={fitted[k]}' for k in ('cpus-per-task', 'mem', 'ntasks')
          if k in fitted and fitted[k] != header.get(k)]
  nodes = setting(_TRAIN_NODES, 'WM_TRAIN_NODES') if spec.nodes else 1
  if nodes < 1:
    raise UserError(f'--train_nodes must be >= 1, got {nodes}')
  if nodes > 1:
    argv.append(f'--nodes={nodes}')
  if partition:
    argv.append(f'--partition={partition}')
  if setting(_ACCOUNT, 'WM_ACCOUNT'):
    argv.append(f'--account={setting(_ACCOUNT, "WM_ACCOUNT")}')
  gpus = 0
  if spec.gpu:
    asked = str(setting(_GPUS, 'WM_GPUS'))
    if asked != 'auto' and not asked.isdigit():
      raise UserError(f'--gpus={asked!r}: give a number of GPUs per job, or auto')
    gpus = int(asked) if asked != 'auto' else int(bool(info and info.gpus))
    if gpus:
      argv.append(f'--gres=gpu:{gpus}')
  notes = [f'{n} (largest node of partition {partition or "default"})' for n in notes]
  return argv, notes, gpus


def stage_args(run_dir: str) -> list[str]:
  args = [f'--run_dir={run_dir}']
  if flags.FLAGS['config'].present:
    args.append(f'--config={flags.FLAGS.config}')
  return args + [f'--config.{k}={v}' for k, v in cli.overrides().items()]


def plan(run: runs.Run) -> list[dict]:
  """One entry per job to submit, in order, each waiting for the one before."""
  if not _ITERATE.value:
    return plan_stages(run, [s.name for s in pipeline.selected_stages()], stage_args(run.root))
  if flags.FLAGS['stages'].present:
    raise UserError('--iterate submits every stage of every round (collect to evaluate); '
                    'leave out --stages')
  rounds = cli.resolve_config(run.root, cli.overrides()).iterate.iterations
  if rounds < 1:
    raise UserError('--iterate: iterate.iterations is 0, so there is no round to submit; '
                    'pass --config.iterate.iterations=N')
  jobs = plan_stages(run, list(iterate.ROUND_STAGES), stage_args(run.root))
  for k in range(rounds + 1):  # after round k: the summary and round k+1's folder, its stages
    jobs += plan_stages(run, ['iterate'], stage_args(run.root) + [f'--after_round={k}'],
                        label=f'r{k}')
    if k < rounds:
      round_run = runs.Run(iterate.round_dir(run.root, k + 1))
      jobs += plan_stages(round_run, list(iterate.ROUND_STAGES), [f'--run_dir={round_run.root}'],
                          label=f'r{k + 1}')
  return jobs


def plan_stages(run: runs.Run, names: list[str], args: list[str], label: str = '') -> list[dict]:
  """The jobs of `names` on `run` that are not done yet, each stage with `args`."""
  jobs = []
  for name in names:
    if name in runs.STAGE_DIRS and run.is_done(name):
      print(f'== {name}: done already ({run.done_path(name)}), not submitted')
      continue
    spec = slurm.SLURM_STAGES[name]
    script = slurm.sbatch_script(name)
    argv, notes, gpus = resources(spec, script)
    argv += stage_extra(name)
    logs = os.path.join(run.root, 'logs')
    size = setting(flags.FLAGS[spec.array], 'WM_' + spec.array.upper()) if spec.array else 0
    if spec.array and size < 1:
      raise UserError(f'--{spec.array} must be >= 1, got {size}')
    env = {}
    if name == 'encode':  # every encoding process must agree on the outer shards
      env['WM_NUM_OUTER_SHARDS'] = str(size * max(gpus, 1))
    common = dict(stage=name, script=script, notes=notes, env=env, args=args, logs=logs,
                  label=label)
    if size:
      jobs.append(dict(common, kind='array', array=f'0-{size - 1}', sbatch=argv + [
          f'--array=0-{size - 1}', f'--output={logs}/{name}-%A_%a.log']))
    if size:  # the check after the array: nothing to do if its last task marked the stage done
      common['env'] = dict(env, WM_DONE_FILE=run.done_path(name))
    jobs.append(dict(common, kind='finish' if size else 'job', sbatch=argv + [
        f'--output={logs}/{name}-%j.log']))
  return jobs


@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  del argv  # parse() refused positional arguments
  if not flags.FLAGS.run_dir:
    raise UserError('--run_dir is required: the folder every stage reads and writes')
  cli.resolve_config(flags.FLAGS.run_dir, cli.overrides())  # refuse a bad config now
  run = runs.Run(flags.FLAGS.run_dir)
  if not _DRY_RUN.value and not _AGAIN.value:
    refuse_if_active(run)
  jobs = plan(run)
  env = dict(os.environ, WM_REPO=slurm.REPO_ROOT, WM_PYTHON=sys.executable)
  previous = _AFTER.value
  for job in jobs:
    dependency = [f'--dependency=afterok:{previous}'] if previous else []
    name = '-'.join(filter(None, (job.pop('label'), job['stage'])))  # r1-collect: round 1's
    job['command'] = ['sbatch', '--parsable', f'--job-name=wm-{name}',
                      '--kill-on-invalid-dep=yes', *dependency, *job['sbatch'], job['script'],
                      *job.pop('args')]
    job['after'] = previous
    if not _DRY_RUN.value:
      os.makedirs(job['logs'], exist_ok=True)  # sbatch --output: a round's, before it starts
    job['job_id'] = (f'<{name}-{job["kind"]}>' if _DRY_RUN.value
                     else slurm.submit(job['command'], dict(env, **job['env'])))
    previous = job['job_id']
    print(f'{name:14s} {job["kind"]:6s} job {job["job_id"]:>8s}'
          f'{"  array " + job["array"] if "array" in job else ""}'
          f'{"  after " + job["after"] if job["after"] else ""}', flush=True)
    for note in job['notes']:
      print(f'{"":14s} fitted: {note}')
    if _DRY_RUN.value:
      print('  ' + shlex.join([f'{k}={v}' for k, v in job['env'].items()] + job['command']))
  if not _DRY_RUN.value and jobs:
    record(run, jobs)
  if _WAIT.value and not _DRY_RUN.value and jobs:
    states = slurm.wait([j['job_id'] for j in jobs])
    bad = {k: v for k, v in states.items() if v != 'COMPLETED'}
    print('all jobs completed' if not bad else f'jobs that did not complete: {bad}')
    if any(v.startswith('PENDING:') for v in bad.values()):
      print('PENDING:<reason> jobs can never start as asked: change their resources (see '
            '--stage_sbatch) and cancel them', file=sys.stderr)
    if bad:
      sys.exit(1)


def refuse_if_active(run: runs.Run) -> None:
  """Two chains on one run dir would do the same work twice: refuse while one is active."""
  path = os.path.join(run.root, JOBS_FILE)
  if not os.path.exists(path):
    return
  last = fileio.read_json(path)['submissions'][-1]['jobs']
  active = sorted({j['job_id'] for j in last
                   for state in slurm.job_states(j['job_id']).values()
                   if not slurm.is_final(state)})
  if active:
    raise UserError(f'jobs {" ".join(active)} of the last submission to {run.root} are still '
                    f'queued or running ({path}); wait for them, cancel them with '
                    f'`scancel {" ".join(active)}`, or pass --allow_active')


def record(run: runs.Run, jobs: list[dict]) -> None:
  path = os.path.join(run.root, JOBS_FILE)
  history = fileio.read_json(path) if os.path.exists(path) else {'submissions': []}
  keys = ('stage', 'kind', 'job_id', 'array', 'after', 'env', 'command', 'logs')
  history['submissions'].append({
      'submitted_at': time.strftime('%F %T'),
      'jobs': [{k: j[k] for k in keys if k in j} for j in jobs]})
  fileio.write_json(path, history)
  print(f'job ids written to {path}; logs in {os.path.join(run.root, "logs")}')


def parse(argv: list[str]) -> list[str]:
  """absl's flags_parser: cli.parse_flags, --help listing the flags passed on to the stages."""
  return cli.parse_flags(argv, ('run_dir', 'config', 'stages'))


if __name__ == '__main__':
  app.run(main, flags_parser=parse)
