"""The sbatch scripts, the submitter and the local pipeline, on a real one-node SLURM cluster.

The cluster is slurm/local_cluster.sh's (started once per session, stopped at the end if this
session started it). Tests marked `slurm` are skipped, with the reason, when it cannot start
(not root and not running). Every job runs the real stage scripts on the debug preset.
"""

from __future__ import annotations

import collections
import fnmatch
import glob
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import DEBUG, REPO, UNGROUPED_SLURM_TESTS, copy_run, script_env

from wm import config as config_lib, rollouts
from wm.infra import fileio, iterate, pipeline, runs, slurm
from wm.stages import shard

# Loaded by every Python process of the jobs (through PYTHONPATH): logs each file a process puts
# in place with os.replace / os.rename, and which array task and job did it.
AUDIT_HOOK = '''
import os, sys
def _wm_audit(event, args, _log=os.environ.get('WM_AUDIT_LOG')):
  if event == 'os.rename' and _log:
    with open(_log, 'a') as f:
      f.write('%s %s %s\\n' % (os.environ.get('SLURM_ARRAY_TASK_ID', '-'),
                              os.environ.get('SLURM_JOB_ID', '-'), os.fsdecode(args[1])))
sys.addaudithook(_wm_audit)
'''


def sh(*argv: str, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
  return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope='session')
def slurm_cluster():
  """The local cluster, started here when needed and able; skips the test when not."""
  if os.environ.get('WM_SLURM_TESTS') == '0':
    pytest.skip('WM_SLURM_TESTS=0')
  if UNGROUPED_SLURM_TESTS:
    pytest.fail(f'pytest-xdist did not put the SLURM tests in one group with pytest '
                f'{pytest.__version__} ({UNGROUPED_SLURM_TESTS[0]} has no @slurm suffix): they '
                'would run at once on the one-node cluster. Install the versions '
                'requirements.txt pins (make venv), or run with TEST_WORKERS=0.', pytrace=False)
  started = sh('bash', 'slurm/local_cluster.sh', timeout=300)
  if started.returncode != 0:
    pytest.skip('local SLURM cluster unavailable: '
                f'{(started.stderr or started.stdout).strip().splitlines()[-1:]}')
  yield
  if 'already running' not in started.stdout:
    sh('bash', 'slurm/stop_local_cluster.sh')


def job_env(**extra: str) -> dict[str, str]:
  env = dict(script_env(), WM_PYTHON=sys.executable)
  for name in list(env):  # settings of the person running the tests must not leak in
    if name.startswith(('WM_SBATCH', 'WM_PARTITION', 'WM_GPU', 'WM_ACCOUNT', 'WM_COLLECT',
                        'WM_SHARD', 'WM_ENCODE', 'WM_CONTROLLER')):
      del env[name]
  return dict(env, **extra)


def submit(run_dir: str, *args: str, env=None, timeout: float = 600):
  argv = ['bash', 'slurm/submit_pipeline.sh', f'--run_dir={run_dir}', f'--config={DEBUG}',
          '--sbatch_args=--cpus-per-task=1 --mem=2G', *args]
  return sh(*argv, env=env or job_env(), timeout=timeout)


def audited_env(tmp_path) -> tuple[dict[str, str], str]:
  hook_dir = tmp_path / 'audit'
  hook_dir.mkdir()
  (hook_dir / 'sitecustomize.py').write_text(AUDIT_HOOK)
  log = str(tmp_path / 'replaced.txt')
  env = job_env(WM_AUDIT_LOG=log)
  env['PYTHONPATH'] = f'{hook_dir}{os.pathsep}{env["PYTHONPATH"]}'
  return env, log


def replaced(log: str, pattern: str) -> dict[str, list[tuple[str, str]]]:
  """{final file name matching pattern: [(array task, job), ...]} from the audit log."""
  found = collections.defaultdict(list)
  with open(log) as f:
    for line in f:
      task, job, path = line.rstrip('\n').split(' ', 2)
      name = os.path.basename(path)
      if fnmatch.fnmatch(name, pattern):
        found[path].append((task, job))
  return found


def check_logs(run_dir: str, jobs: list[dict]) -> None:
  for job in jobs:
    if job['kind'] == 'array':
      first, last = map(int, job['array'].split('-'))
      names = [f'{job["stage"]}-{job["job_id"]}_{k}.log' for k in range(first, last + 1)]
    else:
      names = [f'{job["stage"]}-{job["job_id"]}.log']
    for name in names:
      with open(os.path.join(run_dir, 'logs', name)) as f:
        text = f.read()
      assert f' {job["stage"]} job ' in text and f'{job["stage"]} finished' in text, (name, text)


def check_encoded(run: runs.Run, jobs: list[dict], audit: str) -> None:
  written = replaced(audit, 'encoded.tfrecord-*')
  encode_tasks = [j for j in jobs if j['stage'] == 'encode' and j['kind'] == 'array']
  for split in runs.SPLITS:
    raw = shard.read_manifest(run.split_dir('shard', split))
    manifest = fileio.read_json(os.path.join(run.split_dir('encode', split), 'manifest.json'))
    assert (manifest['num_rollouts'], manifest['num_frames']) == (raw['num_rollouts'],
                                                                  raw['num_frames'])
    for entry in manifest['shards']:  # each output written once, by an array task
      path = os.path.join(run.split_dir('encode', split), entry['file'])
      assert len(written[path]) == 1, (path, written[path])
      assert not encode_tasks or written[path][0][0] != '-', (path, written[path])
      assert shard.sha256(path) == entry['sha256']


def check_exported(stage: str):
  def check(run: runs.Run, jobs: list[dict], audit: str) -> None:
    del jobs, audit
    folder = os.path.join(run.stage_dir(stage), 'export')
    assert os.path.exists(os.path.join(folder, 'model.json')), os.listdir(run.stage_dir(stage))
  return check


def check_video(run: runs.Run, jobs: list[dict], audit: str) -> None:
  del audit
  job = [j for j in jobs if j['stage'] == 'play'][-1]['job_id']
  video = os.path.join(run.stage_dir('play'), f'agent-{job}.mp4')
  assert os.path.getsize(video) > 0, os.listdir(run.stage_dir('play'))


# What each later stage must leave behind, checked when the stage exists on this checkout.
OUTPUT_CHECKS = {'vae': check_exported('vae'), 'encode': check_encoded,
                 'seq': check_exported('seq'), 'play': check_video}


@pytest.mark.slurm
def test_debug_pipeline_on_slurm_survives_preemption_and_writes_each_file_once(
    slurm_cluster, tmp_path):
  run_dir = str(tmp_path / 'run')
  env, audit = audited_env(tmp_path)
  # V trains longer than the debug preset's 20 steps, to be preempted on the way (below).
  result = submit(run_dir, '--collect_tasks=3', '--shard_tasks=2', '--encode_tasks=2',
                  '--config.vae.train_steps=80', '--config.vae.save_every=10', env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  jobs = fileio.read_json(os.path.join(run_dir, 'slurm_jobs.json'))['submissions'][-1]['jobs']
  preempt_training(run_dir, [j for j in jobs if j['stage'] == 'vae'][0]['job_id'])
  states = slurm.wait([j['job_id'] for j in jobs], log=lambda _: None, timeout_s=900)
  assert set(states.values()) == {'COMPLETED'}, states
  check_resumed(run_dir, [j for j in jobs if j['stage'] == 'vae'][0]['job_id'])
  stages = [s.name for s in pipeline.STAGES]
  assert [j['stage'] for j in jobs if j['kind'] != 'array'] == stages
  for before, job in zip(jobs, jobs[1:]):  # one chain, in order
    assert job['after'] == before['job_id'], jobs
  run = runs.Run(run_dir)
  for stage in stages:
    assert run.is_done(stage), stage
  check_logs(run_dir, jobs)
  # Collection: task k of 3 wrote exactly rollouts k, k+3; the finishing job wrote none.
  finish = [j for j in jobs if j['stage'] == 'collect' and j['kind'] == 'finish'][0]
  written = replaced(audit, 'rollout-*.npz')
  assert sorted(rollouts.list_indices(run.stage_dir('collect'))) == list(range(6))
  assert len(written) == 6, written
  for path, writers in written.items():
    index = int(os.path.basename(path)[len('rollout-'):-len('.npz')])
    assert writers == [(str(index % 3), writers[0][1])], (path, writers)
    assert writers[0][1] != finish['job_id']
  # Sharding: every shard of the manifests written once, by an array task, and intact.
  shards = replaced(audit, 'raw.tfrecord-*')
  for split in runs.SPLITS:
    manifest = shard.read_manifest(run.split_dir('shard', split))
    for entry in manifest['shards']:
      path = os.path.join(run.split_dir('shard', split), entry['file'])
      assert len(shards[path]) == 1 and shards[path][0][0] in ('0', '1'), (path, shards[path])
      assert shard.sha256(path) == entry['sha256']
  assert sum(shard.read_manifest(run.split_dir('shard', s))['num_rollouts']
             for s in runs.SPLITS) == 6
  for stage in stages:
    if stage in OUTPUT_CHECKS:
      OUTPUT_CHECKS[stage](run, jobs, audit)
  config = fileio.read_json(run.config_path)
  if 'controller' in stages:
    assert fileio.read_json(run.done_path('controller'))['generations'] == (
        config['controller']['generations'])
  if 'evaluate' in stages:
    assert isinstance(fileio.read_json(run.done_path('evaluate'))['mean'], float)
  # The one-machine runner agrees that everything is done.
  local = sh(sys.executable, '-m', 'wm', f'--run_dir={run_dir}', env=script_env())
  assert local.returncode == 0 and local.stdout.count('done already') == len(stages), local.stdout


@pytest.mark.slurm
def test_failed_stage_cancels_its_dependants(slurm_cluster, tmp_path):
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  (run_dir / 'rollouts').write_text('a file where the rollout folder belongs')  # collect fails
  held = sh('sbatch', '--parsable', '--hold', '--output=/dev/null', '--wrap=true')
  assert held.returncode == 0, held.stderr
  result = submit(str(run_dir), '--collect_tasks=1', f'--after={held.stdout.strip()}')
  assert result.returncode == 0, result.stdout + result.stderr
  jobs = fileio.read_json(str(run_dir / 'slurm_jobs.json'))['submissions'][-1]['jobs']
  again = submit(str(run_dir), '--collect_tasks=1')  # while the first chain waits
  assert again.returncode == 2 and 'still queued or running' in again.stderr, again.stderr
  assert sh('scontrol', 'release', held.stdout.strip()).returncode == 0
  slurm.wait([j['job_id'] for j in jobs], log=lambda _: None, timeout_s=300)
  states = [slurm.job_states(j['job_id']) for j in jobs]
  assert list(states[0].values()) == ['FAILED'], states
  for job, state in zip(jobs[1:], states[1:]):
    assert set(state.values()) == {'CANCELLED'}, (job, state)
  assert not os.path.exists(run_dir / 'records')  # nothing after collection ran


def wait_for(predicate, what: str, timeout: float = 120) -> None:
  deadline = time.time() + timeout
  while not predicate():
    assert time.time() < deadline, f'{what}: not within {timeout}s'
    time.sleep(0.2)


def preempt_training(run_dir: str, job: str) -> None:
  """Sends the job USR1 (what --signal=B:USR1@600 sends before the time limit) once it saved."""
  checkpoints = os.path.join(run_dir, 'vae', 'checkpoints')
  # Collect, shard and V's first steps come before it: minutes beside the other test worker.
  wait_for(lambda: glob.glob(os.path.join(checkpoints, 'ckpt-*.index')), 'a first checkpoint',
           timeout=600)
  assert sh('scancel', '--batch', '--signal=USR1', job).returncode == 0


def check_resumed(run_dir: str, job: str) -> None:
  """The training job saved, requeued itself, resumed from that step; its dependants waited."""
  assert 'Restarts=1' in sh('scontrol', 'show', 'job', job).stdout
  with open(os.path.join(run_dir, 'logs', f'vae-{job}.log')) as f:
    log = f.read()
  assert 'SIGUSR1 received' in log and f'scontrol requeue {job}' in log, log
  stopped = re.search(r'after saving step (\d+)', log)
  resumed = re.search(r'resumed from \S+ at step (\d+)', log)
  assert stopped and resumed and stopped.group(1) == resumed.group(1), log
  assert 0 < int(resumed.group(1)) < 80
  assert fileio.read_json(runs.Run(run_dir).done_path('vae'))['step'] == 80


@pytest.mark.slurm
def test_m_on_two_srun_workers_is_preempted_requeued_and_resumes(slurm_cluster, debug_encoded,
                                                                 tmp_path):
  """slurm/seq.sbatch with two tasks: one srun step of two workers (MultiWorkerMirroredStrategy
  from SlurmClusterResolver). USR1 to the job stops both after the same step; the job requeues
  and both workers resume from that step; the chief alone writes DONE."""
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  # 30 minutes: seq.sbatch's own USR1 comes 600 s before the limit, and must not come here.
  submitted = sh('sbatch', '--parsable', '--ntasks=2', '--ntasks-per-node=2', '--cpus-per-task=1',
                 '--mem=3G', '--time=0:30:00', '--output=/dev/null', 'slurm/seq.sbatch',
                 f'--run_dir={run_dir}', '--config.seq.train_steps=200',
                 '--config.seq.save_every=50', env=job_env())
  assert submitted.returncode == 0, submitted.stderr
  job = submitted.stdout.strip()
  checkpoints = os.path.join(run_dir, 'seq', 'checkpoints')
  # The waits bound a hang, not the speed: this test took 119 s alone, 225-295 s beside another.
  wait_for(lambda: glob.glob(os.path.join(checkpoints, 'ckpt-*.index')), 'a first checkpoint',
           timeout=600)
  assert sh('scancel', '--batch', '--signal=USR1', job).returncode == 0
  states = slurm.wait([job], log=lambda _: None, timeout_s=600)
  with open(os.path.join(run_dir, 'logs', f'seq-{job}.log')) as f:
    log = f.read()
  assert set(states.values()) == {'COMPLETED'}, (states, log[-4000:])
  assert 'srun --ntasks=2' in log and f'scontrol requeue {job}' in log, log[-4000:]
  stopped = set(re.findall(r'after saving step (\d+)', log))
  resumed = re.findall(r'resumed from \S+ at step (\d+)', log)
  assert len(stopped) == 1 and resumed == list(stopped) * 2, (stopped, resumed)
  done = fileio.read_json(runs.Run(run_dir).done_path('seq'))
  assert (done['device']['strategy'], done['device']['workers']) == ('multi_worker', 2), done
  assert done['step'] == 200


def test_submit_dry_run_chains_stages_with_resources(tmp_path):
  env = job_env(WM_SBATCH_SHARD='--time=0:30:00', WM_COLLECT_TASKS='5')
  result = sh(sys.executable, '-m', 'wm.infra.submit', f'--run_dir={tmp_path}', f'--config={DEBUG}',
              '--dry_run', '--partition=cpuq', '--account=proj', '--config.seed=7',
              '--train_nodes=3', env=env)
  assert result.returncode == 0, result.stderr
  commands = [line.strip() for line in result.stdout.splitlines() if line.startswith('  ')
               and ' sbatch ' in f' {line} ']
  arrays = sum(1 for s in pipeline.STAGES if slurm.SLURM_STAGES[s.name].array)
  assert len(commands) == len(pipeline.STAGES) + arrays, result.stdout  # arrays: + a check
  assert '--array=0-4' in commands[0] and '--array' not in commands[1]
  assert 'WM_DONE_FILE=' not in commands[0]
  assert commands[1].startswith(f'WM_DONE_FILE={tmp_path}/rollouts/DONE sbatch ')
  assert all('--partition=cpuq' in c and '--account=proj' in c for c in commands)
  assert all('--kill-on-invalid-dep=yes' in c and '--config.seed=7' in c for c in commands)
  assert '--dependency' not in commands[0]
  assert "'--dependency=afterok:<collect-array>'" in commands[1]
  assert all('--time=0:30:00' in c for c in commands[2:4])
  assert '--time=0:30:00' not in commands[0]
  with_nodes = [re.search(r'slurm/(\w+)\.sbatch', c).group(1) for c in commands
                if '--nodes=3' in c]
  assert with_nodes == ['vae', 'seq'], with_nodes  # a worker per node: V and M only
  assert not os.path.exists(tmp_path / 'slurm_jobs.json')  # a dry run writes nothing
  bad = sh(sys.executable, '-m', 'wm.infra.submit', f'--run_dir={tmp_path}', '--stages=colect',
           '--dry_run', env=env)
  assert bad.returncode == 2 and 'unknown' in bad.stderr and 'Traceback' not in bad.stderr


def test_local_pipeline_runs_missing_stages_and_skips_done_ones(debug_data, tmp_path):
  # The data stages only: the whole chain runs in the SLURM pipeline test (and each stage in its
  # own tests); this checks the runner's order, skipping, report and exit status.
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  run = runs.Run(run_dir)
  run.clear_done('shard')
  argv = [sys.executable, '-m', 'wm', f'--run_dir={run_dir}', '--parallelism=1',
          '--stages=collect,shard']
  first = sh(*argv, env=script_env(), timeout=300)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert '[1/2] collect: done already' in first.stdout, first.stdout
  assert '[2/2] shard: finished in' in first.stdout and run.is_done('shard'), first.stdout
  summary = first.stdout[first.stdout.index('== summary'):]
  row = re.search(r'collect +skipped +- +(\d+) +([\d.]+)M +rollouts=6', summary)
  assert row and int(row.group(1)) == 7 and float(row.group(2)) > 0, summary  # 6 + DONE
  assert re.search(r'shard +ran +[\d.]+s', summary), summary
  mark = os.stat(run.done_path('shard')).st_mtime_ns
  again = sh(*argv, env=script_env(), timeout=120)
  assert again.returncode == 0 and 'shard: done already' in again.stdout, again.stdout
  assert os.stat(run.done_path('shard')).st_mtime_ns == mark
  # A failing stage stops the run with its own exit status and says how to continue.
  run.clear_done('shard')
  os.rename(run.stage_dir('collect'), run.stage_dir('collect') + '.moved')
  open(run.stage_dir('collect'), 'w').close()
  failed = sh(*argv, env=script_env(), timeout=120)
  assert failed.returncode != 0 and 'collect failed with exit status' in failed.stderr
  assert '[2/2] shard' not in failed.stdout and 'collect     failed' in failed.stdout



def test_srun_helpers_build_the_asked_resources():
  env = dict(job_env(WM_SRUN_DRY_RUN='1', WM_PARTITION='cpuq'))
  gpu = sh('bash', 'slurm/srun_gpu.sh', '-g', '2', '-c', '3', '-m', '5G', '-t', '0:10:00',
           '-p', 'gpuq', env=env)
  assert gpu.returncode == 0, gpu.stderr
  for option in ('--gres=gpu:2', '--cpus-per-task=3', '--mem=5G', '--time=0:10:00',
                 '--partition=gpuq', '--pty'):
    assert option in gpu.stdout, gpu.stdout
  cpu = sh('bash', 'slurm/srun_general.sh', '-c', '2', env=env)
  assert '--partition=cpuq' in cpu.stdout and '--gres' not in cpu.stdout, cpu.stdout
  bad = sh('bash', 'slurm/srun_general.sh', '-g', '1', env=env)
  assert bad.returncode == 2 and 'usage' in bad.stderr


@pytest.mark.slurm
def test_srun_general_opens_a_shell_in_a_job(slurm_cluster):
  shell = subprocess.run(['bash', 'slurm/srun_general.sh', '-c', '1', '-m', '1G'], cwd=REPO,
                         input='echo "job=$SLURM_JOB_ID cpus=$SLURM_CPUS_PER_TASK dir=$PWD"\n',
                         capture_output=True, text=True, timeout=120, env=job_env())
  assert shell.returncode == 0, shell.stderr
  assert 'cpus=1' in shell.stdout and f'dir={REPO}' in shell.stdout, shell.stdout
  assert 'job=' in shell.stdout and 'job= ' not in shell.stdout


_RANKS = 'from mpi4py import MPI; print(MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size())'


@pytest.mark.slurm
def test_srun_starts_mpi_ranks_that_meet(slurm_cluster):
  # The controller stage on a cluster is `srun -n N python ...`: its ranks meet through the
  # cluster's MPI plugin (PMIx), which the local cluster chooses when it starts.
  probe = sh(sys.executable, '-c', 'from mpi4py import MPI', env=job_env())
  if probe.returncode != 0:
    pytest.skip(f'mpi4py cannot load MPI ({probe.stderr.strip()[-200:]}): '
                '.ci/install_system_packages.sh, then restart the local cluster')
  ranks = sh('srun', '-n', '2', sys.executable, '-c', _RANKS, env=job_env(), timeout=120)
  conf = sh('scontrol', 'show', 'config').stdout
  plugin = re.search(r'^MpiDefault\s*=\s*(\S+)', conf, re.M)
  assert ranks.returncode == 0 and sorted(ranks.stdout.split('\n')[:2]) == ['0 2', '1 2'], (
      f'srun -n 2 did not start 2 MPI ranks (cluster MpiDefault={plugin and plugin[1]}; restart '
      f'it with slurm/stop_local_cluster.sh and slurm/local_cluster.sh once MPI is installed):\n'
      f'{ranks.stdout[-2000:]}{ranks.stderr[-2000:]}')


@pytest.mark.slurm
def test_ranks_started_without_an_mpi_plugin_leave_the_search_to_rank_0(slurm_cluster,
                                                                         debug_world_model,
                                                                         tmp_path):
  # Without PMI or PMIx Open MPI's MPI_Init would abort both ranks (exit status 1): rank 0
  # plays every episode itself instead, and each rank says why.
  run_dir = copy_run(debug_world_model, str(tmp_path / 'run'))
  result = sh('srun', '--mpi=none', '-n', '2', sys.executable, 'scripts/train_controller.py',
              f'--run_dir={run_dir}', '--config.controller.generations=1', env=job_env(),
              timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count('by srun without an MPI plugin') == 2, result.stderr[-3000:]
  assert 'srun --mpi=pmix' in result.stderr
  history = fileio.read_jsonl(os.path.join(run_dir, 'controller', 'history.jsonl'))
  assert [row['generation'] for row in history] == [1]


# A reader that leaves early (grep -q, grep -m, head) can end its writer with SIGPIPE, and under
# pipefail that fails the pipeline now and then: the local cluster chose MpiDefault=none so.
_EARLY_READER = re.compile(r'\|\s*(grep\s+(-\w*[qm]\w*|--quiet|--max-count)|head)\b')


def test_no_pipefail_script_pipes_into_a_reader_that_leaves_early():
  scripts = subprocess.run(['git', 'ls-files', '*.sh', '.ci/run'], cwd=REPO, text=True,
                           capture_output=True, check=True).stdout.split()
  assert 'slurm/local_cluster.sh' in scripts
  found = []
  for path in scripts:
    with open(os.path.join(REPO, path)) as f:
      lines = f.read().splitlines()
    if not any('pipefail' in line for line in lines):
      continue
    found += [f'{path}:{n}: {line.strip()}' for n, line in enumerate(lines, 1)
              if not line.lstrip().startswith('#') and _EARLY_READER.search(line)]
  assert not found, '\n'.join(found)


def test_resources_are_fitted_to_the_partition(tmp_path):
  script = tmp_path / 'x.sbatch'
  script.write_text('#!/bin/bash\n#SBATCH --cpus-per-task=8\n#SBATCH --mem=64G\n'
                    '#SBATCH --ntasks=16\n#SBATCH --requeue\necho hi\n')
  options = slurm.header_options(str(script))
  assert options == {'cpus-per-task': '8', 'mem': '64G', 'ntasks': '16', 'requeue': ''}
  laptop = slurm.Partition(cpus=2, mem_mb=24000, total_cpus=2, gpus=0)
  fitted, notes = slurm.fit(options, laptop)
  assert (fitted['cpus-per-task'], fitted['mem'], fitted['ntasks']) == ('2', '24000M', '1')
  assert len(notes) == 3
  big = slurm.Partition(cpus=128, mem_mb=512000, total_cpus=1024, gpus=8)
  assert slurm.fit(options, big) == (options, [])
  assert slurm.fit(options, None) == (options, [])  # sinfo could not tell: unchanged
  assert [slurm.mem_mb(m) for m in ('4000', '512M', '8G', '1T')] == [4000, 512, 8192, 1048576]
  with pytest.raises(slurm.UserError, match='memory size'):
    slurm.mem_mb('lots')


@pytest.mark.slurm
def test_waiting_stops_at_a_job_that_can_never_start(slurm_cluster):
  cpus = slurm.partition_info(None).total_cpus
  job = sh('sbatch', '--parsable', f'--ntasks={cpus + 1}', '--output=/dev/null', '--wrap=true')
  assert job.returncode == 0, job.stderr
  try:
    states = slurm.wait([job.stdout.strip()], log=lambda _: None, timeout_s=60)
  finally:
    sh('scancel', job.stdout.strip())
  assert states == {job.stdout.strip(): 'PENDING:PartitionConfig'}


@pytest.mark.slurm
def test_iterative_training_is_submitted_as_one_chain_of_rounds(slurm_cluster, debug_agent,
                                                                tmp_path):
  run_dir = copy_run(debug_agent, str(tmp_path / 'run'))  # round 0 trained up to its controller
  result = submit(run_dir, '--iterate', '--wait', '--collect_tasks=2', '--shard_tasks=1',
                  '--encode_tasks=1', '--config.iterate.iterations=1',
                  '--config.iterate.rollouts=2', '--config.iterate.vae_steps=10',
                  '--config.iterate.seq_steps=10', '--config.iterate.generations=1')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  jobs = fileio.read_json(os.path.join(run_dir, 'slurm_jobs.json'))['submissions'][-1]['jobs']
  round1 = runs.Run(os.path.join(run_dir, 'iterations', '1'))
  # Round 0's finished stages are not submitted again; its evaluation is, then the rounds.
  names = [(j['stage'], os.path.dirname(j['logs'])) for j in jobs if j['kind'] != 'array']
  assert names == [('evaluate', run_dir), ('iterate', run_dir)] + [
      (stage, round1.root) for stage in iterate.ROUND_STAGES] + [('iterate', run_dir)], names
  for before, job in zip(jobs, jobs[1:]):  # one chain, in order
    assert job['after'] == before['job_id'], jobs
  config = config_lib.load_json(round1.config_path)
  assert (config.collect.policy, config.collect.controller_run) == ('controller', run_dir)
  assert fileio.read_json(round1.done_path('collect'))['rollouts'] == 8  # 6 linked + 2 played
  assert fileio.read_json(round1.done_path('vae'))['step'] == 30
  assert isinstance(fileio.read_json(round1.done_path('evaluate'))['mean'], float)
  for job in jobs:  # each round's jobs log into that round's folder
    if job['kind'] != 'array':
      log = os.path.join(job['logs'], f'{job["stage"]}-{job["job_id"]}.log')
      assert f'{job["stage"]} finished' in open(log).read(), log
  summary = open(os.path.join(run_dir, 'iterations', 'summary.md')).read()
  assert '| 1 | iterations/1 | 8 | 30 | 30 |' in summary, summary
  again = submit(run_dir, '--iterate', '--dry_run', '--config.iterate.iterations=1')
  assert again.returncode == 0 and again.stdout.count('done already') == 14, again.stdout
