"""wm.infra.sweep: the grid, which runs share which stages, reruns, SLURM chains and the summary.

The sharing rule is tested on configs directly (fast); one real sweep of 4 debug runs through
collect and shard proves the data stages run once per seed, a rerun reuses them and a changed
shared setting is refused; the summary is tested on runs given CMA-ES and evaluation results.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import DEBUG, REPO, script_env
from test_slurm import job_env, slurm_cluster  # noqa: F401 (slurm_cluster: a fixture)
from wm.errors import UserError
from wm.infra import fileio, sweep

GRID = ['--grid', 'controller.population_size=4,6', '--grid', 'seed=0,1']
NAMES = [f'controller.population_size={p},seed={s}' for p in (4, 6) for s in (0, 1)]


def _sweep(root, *args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'wm.infra.sweep', f'--root={root}', *args],
                        cwd=REPO, env=script_env(), capture_output=True, text=True,
                        timeout=timeout)


def _planned(grid: dict, base: dict | None = None, record: dict | None = None):
  found = sweep.expand(DEBUG, base or {}, grid)
  sweep.share(found, record)
  return {r.name: r for r in found}


def _record(root, planned) -> dict:
  sweep.apply(str(root), list(planned.values()), None, {'config': DEBUG})
  return fileio.read_json(os.path.join(root, sweep.RECORD))


# ------------------------------------------------------------------------ the sharing rule

def test_runs_share_each_stage_whose_inputs_agree():
  runs = _planned({'seq.train_steps': ['20', '30'], 'controller.population_size': ['4', '6']})
  assert list(runs) == ['seq.train_steps=20,controller.population_size=4',
                        'seq.train_steps=20,controller.population_size=6',
                        'seq.train_steps=30,controller.population_size=4',
                        'seq.train_steps=30,controller.population_size=6']
  first = next(iter(runs))
  for stage in ('collect', 'shard', 'vae', 'encode'):  # nothing before seq differs
    assert {r.owners[stage] for r in runs.values()} == {first}, stage
  assert {r.owners['seq'] for r in runs.values()} == {
      'seq.train_steps=20,controller.population_size=4',
      'seq.train_steps=30,controller.population_size=4'}
  for stage in ('controller', 'evaluate', 'play'):  # every run has its own
    assert all(r.owners[stage] == name for name, r in runs.items()), stage


def test_a_seed_grid_shares_nothing_and_names_are_folder_safe():
  runs = _planned({'seed': ['0', '1'], 'collect.policy': ['held']})
  assert list(runs) == ['seed=0,collect.policy=held', 'seed=1,collect.policy=held']
  assert all(r.owners[s] == name for name, r in runs.items() for s in r.owners)
  assert sweep.run_name({'env.name': 'a/b c', 'x': '.5'}) == 'env.name=a_b_c,x=.5'
  assert sweep.run_name({'.a': '1'}) == '_a=1'


def test_new_grid_values_join_the_recorded_owners(tmp_path):
  record = _record(tmp_path, _planned({'controller.population_size': ['4', '6']}))
  runs = _planned({'controller.population_size': ['2', '4', '6']}, record=record)
  # population_size=2 comes first in the grid, but the data stages already belong to =4.
  assert runs['controller.population_size=2'].owners['seq'] == 'controller.population_size=4'
  assert runs['controller.population_size=2'].owners['controller'] == 'controller.population_size=2'
  sweep.refuse_changes(list(runs.values()), record)  # nothing changed: no refusal
  assert sweep.link_problems(str(tmp_path), list(runs.values())) == []
  link = tmp_path / 'controller.population_size=6' / 'vae'
  assert os.readlink(link) == os.path.join('..', 'controller.population_size=4', 'vae')


def test_a_changed_setting_of_a_shared_stage_is_refused_naming_it(tmp_path):
  record = _record(tmp_path, _planned({'controller.population_size': ['4', '6']}))
  changed = _planned({'controller.population_size': ['4', '6']}, {'seq.train_steps': '30'},
                     record)
  with pytest.raises(UserError, match=r'the seq stage is shared .* seq.train_steps 20 -> 30'):
    sweep.refuse_changes(list(changed.values()), record)
  # A stage each run has to itself is the pipeline's to redo or refuse (wm/infra/changes.py).
  own = _planned({'controller.population_size': ['4', '6']}, {'controller.trials': '2'}, record)
  sweep.refuse_changes(list(own.values()), record)


def test_a_folder_where_a_link_belongs_is_refused(tmp_path):
  runs = _planned({'controller.population_size': ['4', '6']})
  os.makedirs(tmp_path / 'controller.population_size=6' / 'rollouts')
  problems = sweep.link_problems(str(tmp_path), list(runs.values()))
  assert len(problems) == 1 and 'rollouts is a folder, but controller.population_size=6 shares ' \
      'collect from controller.population_size=4' in problems[0], problems


@pytest.mark.parametrize('args,message', [
    (['--grid', 'seed'], "--grid='seed': expected FIELD=V1,V2"),
    (['--grid', 'seed=1,1'], 'a value is repeated'),
    (['--grid', 'controller.nonsense=1,2'], "unknown config field 'controller.nonsense'"),
    (['--grid', 'seed=0,1', '--config.seed=3'], "['seed'] given both as --config.FIELD"),
    ([], 'a sweep needs at least one --grid'),
])
def test_bad_grids_are_one_message_and_exit_2(tmp_path, args, message):
  result = _sweep(tmp_path / 'root', f'--config={DEBUG}', *args)
  assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and not (tmp_path / 'root').exists()


def test_help_lists_the_sweep_flags():
  result = subprocess.run([sys.executable, '-m', 'wm.infra.sweep', '--help'], cwd=REPO,
                          env=script_env(), capture_output=True, text=True, timeout=60)
  for flag in ('root', 'grid', 'config', 'stages', 'slurm', 'summary', 'dry_run'):
    assert f'--{flag}' in result.stdout, (flag, result.stdout[-3000:])


# ------------------------------------------------------------------------ SLURM

def test_slurm_dry_run_chains_shared_stages_on_the_owners_jobs(tmp_path):
  result = _sweep(tmp_path, f'--config={DEBUG}', *GRID, '--slurm', '--dry_run')
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  owner, sharer = NAMES[0], NAMES[2]  # population_size 4 and 6, seed 0
  mine = out[out.index(f'==== {sharer}\n'):out.index(f'==== {NAMES[3]}\n')]
  assert mine.count('shared job') == 5 and 'collect     array' not in mine, mine
  controller = next(line for line in mine.splitlines() if 'job-name=wm-controller' in line)
  assert f"'--dependency=afterok:<{owner}:seq-job>'" in controller, controller
  assert f'--run_dir={tmp_path}/{sharer}' in controller
  assert out.count('job-name=wm-collect') == 4  # 2 seeds x (array + finish), not 4 runs' worth
  assert not os.listdir(tmp_path), 'a dry run wrote something'


@pytest.mark.slurm
@pytest.mark.usefixtures('slurm_cluster')
def test_a_sweep_on_slurm_waits_for_the_owners_jobs(tmp_path):
  # V's settings differ: collect and shard run once, each run trains its own V after them.
  names = ['vae.kl_tolerance=0.5', 'vae.kl_tolerance=1.0']
  result = subprocess.run(
      [sys.executable, '-m', 'wm.infra.sweep', f'--root={tmp_path}', f'--config={DEBUG}',
       '--grid', 'vae.kl_tolerance=0.5,1.0', '--stages=collect,shard,vae', '--slurm', '--wait',
       '--collect_tasks=1', '--shard_tasks=1', '--sbatch_args=--cpus-per-task=1 --mem=2G'],
      cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  owner, sharer = ([fileio.read_json(str(tmp_path / n / 'slurm_jobs.json'))['submissions'][-1][
      'jobs'] for n in names])
  assert [j['stage'] for j in owner] == ['collect', 'collect', 'shard', 'shard', 'vae']
  assert [(j['stage'], j['kind']) for j in sharer] == [
      ('collect', 'shared'), ('shard', 'shared'), ('vae', 'job')]
  assert sharer[1]['job_id'] == owner[3]['job_id'] == sharer[2]['after'], (owner, sharer)
  for name in names:
    assert os.path.exists(tmp_path / name / 'vae' / 'DONE'), name
  assert os.path.realpath(tmp_path / names[1] / 'records') == str(tmp_path / names[0] / 'records')
  assert not glob.glob(str(tmp_path / names[1] / 'logs' / 'collect-*'))


# ------------------------------------------------------------------------ a real sweep

def test_a_sweep_shares_the_data_stages_reruns_and_refuses_a_changed_shared_key(tmp_path):
  root = tmp_path / 'sweep'
  args = [f'--config={DEBUG}', *GRID, '--stages=collect,shard', '--parallelism=1']
  first = _sweep(root, *args)
  assert first.returncode == 0, first.stderr[-5000:]
  assert first.stdout.count('collect: started') == 2, first.stdout[-5000:]  # once per seed
  rollouts = {os.path.realpath(root / name / 'rollouts') for name in NAMES}
  assert rollouts == {str(root / NAMES[0] / 'rollouts'), str(root / NAMES[1] / 'rollouts')}
  assert sorted(os.path.basename(os.path.dirname(os.path.dirname(p)))
                for p in glob.glob(str(root / '*' / 'logs' / 'collect.log'))) == NAMES[:2]
  for name in NAMES:
    assert os.path.exists(root / name / 'records' / 'DONE') and os.path.exists(
        root / name / 'config.json')
  record = json.loads((root / 'sweep.json').read_text())
  assert [r['name'] for r in record['runs']] == NAMES
  assert record['runs'][3]['stages']['shard']['owner'] == NAMES[1]
  assert record['runs'][3]['overrides'] == {'controller.population_size': '6', 'seed': '1'}

  summary = (root / 'summary.md').read_text()
  assert summary in first.stdout and summary.count('| shard done |') == 4, summary
  assert (root / 'summary.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  again = _sweep(root, *args)
  assert again.returncode == 0, again.stderr[-5000:]
  assert 'started' not in again.stdout and again.stdout.count('done already') == 8

  changed = _sweep(root, *args, '--config.records.valid_fraction=0.3')
  assert changed.returncode == 2 and 'Traceback' not in changed.stderr, changed.stderr[-3000:]
  assert 'the shard stage is shared' in changed.stderr
  assert 'records.valid_fraction 0.2 -> 0.3' in changed.stderr


# ------------------------------------------------------------------------ the summary

def _fake_results(run_dir: str, offset: float) -> None:
  """CMA-ES history and a test evaluation, as the controller and evaluate stages write them."""
  rows = [{'generation': g, 'mode': 'dream', 'best': offset + g, 'mean': offset + g / 2,
           'worst': offset, 'sigma': 0.1, 'eval_mean': offset + g - 1 if g % 2 == 0 else None,
           'eval_std': 0.5} for g in range(1, 7)]
  fileio.write_text(os.path.join(run_dir, 'controller', 'history.jsonl'),
                    ''.join(json.dumps(r) + '\n' for r in rows))
  returns = [offset, offset + 2.0]
  fileio.write_json(os.path.join(run_dir, 'evaluate', 'result.json'),
                    {'episodes': 2, 'mean': offset + 1.0, 'std': 1.0, 'returns': returns})
  fileio.write_json(os.path.join(run_dir, 'evaluate', 'DONE'),
                    {'output': 'result.json', 'mean': offset + 1.0})


def test_the_summary_tables_plots_and_hparams_every_run(tmp_path):
  _record(tmp_path, _planned({'controller.population_size': ['4', '6'], 'seed': ['0', '1']}))
  for i, name in enumerate(NAMES):
    _fake_results(str(tmp_path / name), 10.0 * i)
  result = _sweep(tmp_path, '--summary')
  assert result.returncode == 0, result.stderr[-3000:]
  text = (tmp_path / 'summary.md').read_text()
  assert text.strip() in result.stdout
  row = next(line for line in text.splitlines() if line.startswith(f'| {NAMES[3]} '))
  assert '| 6/2 ' in row and '| 35 ' in row and '31 +- 1 (2)' in row, row  # gen/generations
  # Seeds pooled: population_size=4 has returns 0, 2, 10, 12 -> mean 6.
  pooled = next(line for line in text.splitlines() if line.startswith('| 4 '))
  assert pooled.split('|')[2:5] == [' 0,1   ', ' 4        ', ' 6    '], pooled
  assert (tmp_path / 'summary.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  for name in NAMES:
    events = glob.glob(str(tmp_path / 'tb' / name / 'events.out.tfevents.*'))
    data = b''.join(open(p, 'rb').read() for p in events)
    assert b'_hparams_/session_start_info' in data and b'evaluate/mean' in data, name
  config = glob.glob(str(tmp_path / 'tb' / 'events.out.tfevents.*'))
  assert config and b'_hparams_/experiment' in open(config[0], 'rb').read()


def test_summary_of_a_folder_without_a_sweep_is_refused(tmp_path):
  result = _sweep(tmp_path, '--summary')
  assert result.returncode == 2 and 'holds no sweep' in result.stderr, result.stderr[-2000:]

