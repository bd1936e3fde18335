"""python -m wm.infra.status on real run dirs: finished, running, killed, failed, queued on SLURM.

The run dirs are copies of the session's debug_agent run (every stage up to the controller done);
the running stage is a real V training, the queued one a real submission to the local cluster.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, copy_run, run_script, script_env
from test_slurm import sh, slurm_cluster, submit  # noqa: F401 (slurm_cluster: a fixture)

from wm.infra import fileio, progress, runs

DONE_BEFORE_EVALUATE = ('collect', 'shard', 'vae', 'encode', 'seq', 'controller')


def status(*args: str, check: bool = True) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, '-m', 'wm.infra.status', *args], capture_output=True,
                          text=True, timeout=60, env=script_env(), cwd=REPO)
  assert not check or result.returncode == 0, result.stdout + result.stderr
  return result


def status_json(*run_dirs: str) -> list[dict]:
  return json.loads(status(*run_dirs, '--json').stdout)['runs']


def stages(run: dict) -> dict[str, dict]:
  return {s['stage']: s for s in run['stages']}


def tree(root: str) -> dict[str, tuple[int, int]]:
  """Every path under root with its size and modification time."""
  found = {}
  for folder, _, names in os.walk(root):
    for name in ['.', *names]:
      info = os.stat(os.path.join(folder, name))
      found[os.path.join(folder, name)] = (info.st_size, info.st_mtime_ns)
  return found


def wait_for(predicate, what: str, timeout: float = 180):
  deadline = time.time() + timeout
  while not (value := predicate()):
    assert time.time() < deadline, f'{what}: not within {timeout}s'
    time.sleep(0.2)
  return value


def estimate(path: str, process: subprocess.Popen, log: str) -> float | None:
  """The time left V's training wrote to `path`; fails at once when it cannot come."""
  with open(log) as f:
    text = f.read()
  if process.poll() is not None:
    raise AssertionError(f'exited {process.returncode} before writing {path}:\n{text}')
  if not os.path.exists(path):  # Progress writes the file before it logs its first line
    assert 'vae train steps: ' not in text, f'V reports progress but not in {path}'
    return None
  return fileio.read_json(path)['eta_s']


def test_progress_writes_its_state_and_shows_percent_and_time_left(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  p = progress.Progress('steps', 10, log_every_s=0, folder=str(tmp_path), write_every_s=0)
  p.update(1)
  time.sleep(0.05)
  p.update(4)
  state = fileio.read_json(str(tmp_path / progress.FILE))
  assert (state['name'], state['done'], state['total'], state['percent']) == ('steps', 4, 10, 40)
  assert state['rate'] > 0 and state['eta_s'] == pytest.approx(6 / state['rate'])
  assert (state['host'], state['pid']) == (progress.HOST, os.getpid())
  assert abs(state['updated_at'] - time.time()) < 5 and state['elapsed_s'] >= 0.05
  assert 'steps: 4/10 (40%), 0s, ~' in caplog.text and ' left' in caplog.text, caplog.text
  p.update(10)
  state = fileio.read_json(str(tmp_path / progress.FILE))
  assert (state['done'], state['percent'], state['eta_s']) == (10, 100, 0)
  assert [progress.format_duration(s) for s in (12, 180, 7500)] == ['12s', '3m', '2h05m']


def test_finished_run_shows_each_stage_done_with_its_results(debug_agent, tmp_path):
  run_dir = copy_run(debug_agent, str(tmp_path / 'run'))
  run_script('evaluate', f'--run_dir={run_dir}', '--episodes=2')
  before = tree(run_dir)
  [run] = status_json(run_dir)
  assert tree(run_dir) == before  # it only reads
  states = {name: s['state'] for name, s in stages(run).items()}
  assert states == {**dict.fromkeys(DONE_BEFORE_EVALUATE + ('evaluate',), 'done'),
                    'play': 'not started'}
  r, done = run['results'], runs.Run(run_dir)
  vae, seq = (fileio.read_json(done.done_path(s)) for s in ('vae', 'seq'))
  assert r['vae_valid_loss'] == (vae.get('valid') or {}).get('loss')
  assert r['seq_valid_loss'] == seq['valid']['loss']
  with open(os.path.join(run_dir, 'controller', 'history.jsonl')) as f:
    history = [json.loads(line) for line in f]
  assert (r['controller_generation'], r['controller_generations']) == (len(history), len(history))
  assert r['controller_best'] == max(row['best'] for row in history)
  assert r['score'] == fileio.read_json(os.path.join(run_dir, 'evaluate', 'result.json'))['mean']
  text = status(run_dir).stdout
  assert f'valid loss {seq["valid"]["loss"]:.4g}' in text, text
  assert f'generation {len(history)}/{len(history)}, best' in text and 'score ' in text, text


def test_training_stage_running_then_killed_then_failed(debug_agent, tmp_path):
  run_dir = copy_run(debug_agent, str(tmp_path / 'run'))
  os.makedirs(os.path.join(run_dir, 'logs'))
  log = os.path.join(run_dir, 'logs', 'vae.log')
  with open(log, 'w') as out:
    train = subprocess.Popen([sys.executable, 'scripts/train_vae.py', f'--run_dir={run_dir}',
                              '--config.vae.train_steps=100000'], stdout=out,
                             stderr=subprocess.STDOUT, env=script_env(), cwd=REPO)
  try:
    wait_for(lambda: estimate(os.path.join(run_dir, 'vae', progress.FILE), train, log),
             'a progress.json with an estimate')
    vae = stages(status_json(run_dir)[0])['vae']
    assert vae['state'] == 'running' and vae['progress']['pid'] == train.pid, vae
    assert vae['progress']['total'] == 100000 and 20 < vae['progress']['done'] < 100000, vae
    assert '% (' in vae['detail'] and ' left' in vae['detail'], vae['detail']
    row = [line for line in status(run_dir).stdout.splitlines() if line.startswith('  vae ')]
    assert row and ' running ' in row[0] and ' left' in row[0], row
  finally:
    train.send_signal(signal.SIGKILL)
    train.wait()
  vae = stages(status_json(run_dir)[0])['vae']
  assert vae['state'] == 'stopped' and vae['detail'].startswith('not running; reached '), vae
  assert vae['log'] == log and vae['error'] is None, vae  # what it logged has no error
  with open(log, 'a') as out:  # what SLURM adds to a job's log when it kills the job
    out.write('slurmstepd: error: *** JOB 7 ON vm CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME '
              'LIMIT ***\n')
  [run] = status_json(run_dir)
  vae = stages(run)['vae']
  assert vae['state'] == 'failed' and vae['error'].startswith('slurmstepd: error: *** JOB 7'), vae
  assert stages(run)['encode']['state'] == 'done'  # V's export is unchanged: not stale
  text = status(run_dir).stdout
  assert 'failed' in text and 'slurmstepd: error' in text and 'logs/vae.log' in text, text


def test_controller_in_its_warm_start_shows_the_warm_search_progress(debug_agent, tmp_path):
  """A real search's warm start (controller.warm_generations) reports in RUN/controller/warm:
  status shows that until the real search writes its own progress. The progress files are
  written by Progress itself, from this (live) process, as the stage's searches write them."""
  run_dir = copy_run(debug_agent, str(tmp_path / 'run'))
  folder = os.path.join(run_dir, 'controller')
  os.remove(os.path.join(folder, 'DONE'))
  real = progress.Progress('controller generations', 60, folder=folder, write_every_s=0)
  real.update(0)  # a rerun's real search, before its warm start took over the process
  time.sleep(0.05)
  warm = progress.Progress('controller generations', 10, folder=os.path.join(
      folder, runs.WARM), write_every_s=0)
  warm.update(3)
  [run] = status_json(run_dir)
  controller = stages(run)['controller']
  assert controller['state'] == 'running', controller
  assert controller['detail'].startswith('warm start in the dream: 30% (3/10)'), controller
  header, row = status(run_dir, str(tmp_path / 'run')).stdout.splitlines()[:2]
  assert row.split()[6:8] == ['warm', '30%'], (header, row)  # the comparison's controller cell
  time.sleep(0.05)
  real.update(5)  # the real search reports: its own progress shows again
  controller = stages(status_json(run_dir)[0])['controller']
  assert controller['detail'].startswith('8% (5/60)'), controller


def test_missing_run_dir_is_one_message(tmp_path):
  result = status(str(tmp_path / 'nothing'), check=False)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert f'run dir {tmp_path / "nothing"} does not exist' in result.stderr
  assert status(str(tmp_path), check=False).returncode == 2  # a folder that is no run


def test_runs_compared_in_one_table(debug_agent, tmp_path):
  changed = copy_run(debug_agent, str(tmp_path / 'changed'))
  with open(os.path.join(changed, 'seq', 'export', 'model.json'), 'a') as f:
    f.write(' ')  # M changed since the controller was trained
  result = status(debug_agent, changed)
  header, first, second, *notes = result.stdout.splitlines()
  assert header.split()[:9] == ['run', *runs.STAGE_DIRS], header
  assert first.split()[:9] == [debug_agent, *['done'] * 6, '-', '-'], first
  assert second.split()[:9] == [changed, *['done'] * 5, 'stale', '-', '-'], second
  assert first.split()[-3] == second.split()[-3] == '2/2'  # the controller's generations
  assert first.split()[-2] == second.split()[-2] != '-'  # and its best
  assert notes and notes[0].startswith(f'{changed}: controller stale: controller was made from'
                                       ' the seq stage'), notes
  assert [r['run'] for r in status_json(debug_agent, changed)] == [debug_agent, changed]


def test_curves_show_each_evaluation_against_the_search_time(debug_agent, tmp_path):
  """--curves: a row per evaluated generation, at the minutes of fitness spent up to it."""
  history = fileio.read_jsonl(os.path.join(debug_agent, 'controller', 'history.jsonl'))
  evaluated = [r for r in history if r['eval_mean'] is not None]
  assert evaluated and all(r['fitness_s'] > 0 for r in history), history
  result = json.loads(status(debug_agent, '--curves', '--json').stdout)['curves'][debug_agent]
  assert [p['generation'] for p in result] == [r['generation'] for r in evaluated]
  for point in result:
    spent = sum(r['fitness_s'] for r in history if r['generation'] <= point['generation'])
    assert abs(point['search_min'] - spent / 60) < 1e-9, (point, spent)
    row = history[point['generation'] - 1]
    assert (point['eval_mean'], point['dream_eval_mean']) == (row['eval_mean'],
                                                               row['dream_eval_mean'])
  lines = status(debug_agent, '--curves').stdout.splitlines()
  assert lines[0] == f'{debug_agent}:' and 'search time (min)' in lines[1], lines
  assert [line.split()[0] for line in lines[2:]] == [str(p['generation']) for p in result]
  assert status(debug_agent, str(tmp_path / 'none'), '--curves', check=False).returncode == 2


@pytest.mark.slurm
@pytest.mark.usefixtures('slurm_cluster')
def test_queued_job_is_shown_with_its_state(debug_agent, tmp_path):
  run_dir = copy_run(debug_agent, str(tmp_path / 'run'))
  runs.Run(run_dir).clear_done('vae')
  held = sh('sbatch', '--parsable', '--hold', '--output=/dev/null', '--wrap=true')
  assert held.returncode == 0, held.stderr
  try:
    result = submit(run_dir, '--stages=vae', f'--after={held.stdout.strip()}')
    assert result.returncode == 0, result.stdout + result.stderr
    [run] = status_json(run_dir)
    [job] = run['slurm']['jobs']
    assert job['stage'] == 'vae' and job['states'] == {job['job_id']: 'PENDING (Dependency)'}
    vae = stages(run)['vae']
    assert (vae['state'], vae['detail']) == ('queued', f'job {job["job_id"]} PENDING '
                                                       '(Dependency)'), vae
    text = status(run_dir).stdout
    assert f'vae  job  {job["job_id"]}  PENDING (Dependency)' in text, text
  finally:
    jobs = os.path.join(run_dir, 'slurm_jobs.json')
    jobs = fileio.read_json(jobs)['submissions'][-1]['jobs'] if os.path.exists(jobs) else []
    sh('scancel', held.stdout.strip(), *[j['job_id'] for j in jobs])
