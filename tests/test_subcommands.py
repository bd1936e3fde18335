"""python -m wm's one entry point: the pipeline by default, subcommands by their first argument."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO, script_env


def wm(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'wm', *args], capture_output=True, text=True,
                        timeout=120, env=script_env(), cwd=REPO)


def test_help_names_the_subcommands_beside_the_pipeline_flags():
  result = wm('--help')
  for name in ('status', 'config', 'sweep'):
    assert f'python -m wm {name}' in result.stdout, (name, result.stdout[:2000])
  assert '  --run_dir:' in result.stdout


def test_status_subcommand_is_wm_infra_status(tmp_path):
  (tmp_path / 'rollouts').mkdir()
  direct = subprocess.run([sys.executable, '-m', 'wm.infra.status', str(tmp_path), '--json'],
                          capture_output=True, text=True, timeout=120, env=script_env(),
                          cwd=REPO)
  via = wm('status', str(tmp_path), '--json')
  assert via.returncode == direct.returncode == 0, via.stderr[-2000:]
  assert via.stdout == direct.stdout and '"stage": "collect"' in via.stdout
  help_text = wm('status', '--help').stdout
  assert 'Where runs stand' in help_text and '--[no]json' in help_text, help_text[-2000:]


def test_status_subcommand_refuses_a_missing_run_dir_cleanly(tmp_path):
  result = wm('status', str(tmp_path / 'nothing'))
  assert result.returncode == 2 and 'does not exist' in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


def test_an_unknown_subcommand_is_refused_naming_them():
  result = wm('stauts', 'RUN')
  assert result.returncode == 2, result.stderr[-2000:]
  assert "unknown subcommand 'stauts'; subcommands: status" in result.stderr
  assert 'Traceback' not in result.stderr


# Runs `python -m wm sweep ...` with wm.infra.sweep replaced: by a stand-in whose main(argv)
# prints its arguments, or (None) by nothing, as in a checkout without the module.
SWEEP = textwrap.dedent('''
    import runpy, sys, types
    if sys.argv[1] == 'present':
      module = types.ModuleType('wm.infra.sweep')
      module.main = lambda argv: print('sweep main got', argv)  # what follows `sweep`
      sys.modules['wm.infra.sweep'] = module
    else:
      sys.modules['wm.infra.sweep'] = None  # import fails as if the file were missing
    sys.argv = ['wm', 'sweep', *sys.argv[2:]]
    runpy.run_module('wm', run_name='__main__')
''')


def sweep(kind: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', SWEEP, kind, *args], capture_output=True,
                        text=True, timeout=120, env=script_env(), cwd=REPO)


def test_sweep_subcommand_runs_wm_infra_sweep_main_with_its_arguments():
  result = sweep('present', 'runs/a', 'runs/b')
  assert result.returncode == 0, result.stderr[-2000:]
  assert "sweep main got ['runs/a', 'runs/b']" in result.stdout


def test_sweep_subcommand_without_the_module_says_so():
  result = sweep('missing', 'runs/a')
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'this checkout has no wm/infra/sweep.py' in result.stderr
  assert 'Traceback' not in result.stderr
