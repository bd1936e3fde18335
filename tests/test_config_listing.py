"""python -m wm config: every field with its value, default, type and meaning, changes marked."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import DEBUG, REPO, debug_config, run_script, script_env
from wm import config as config_lib


def listing(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'wm', 'config', *args], capture_output=True,
                        text=True, timeout=120, env=script_env(), cwd=REPO)


def row(text: str, name: str) -> list[str]:
  """The listing's row of field `name`: [mark, name, value, default, type, meaning...]."""
  line = next(t for t in text.splitlines() if re.match(rf'^[*+ ] {re.escape(name)} ', t))
  return [line[0], *line[2:].split(None, 4)]


def test_every_field_has_the_meaning_written_after_it_in_config_py():
  source = open(config_lib.__file__).read()
  rows = config_lib.fields(config_lib.Config())
  assert len(rows) > 50 and all(r.meaning for r in rows), [r.name for r in rows if not r.meaning]
  repeat = next(r for r in rows if r.name == 'env.action_repeat')
  assert f'  action_repeat: int = 1  # {repeat.meaning}\n' in source
  assert (repeat.value, repeat.default, repeat.type) == (1, 1, 'int')


def test_small_preset_lists_every_field_and_marks_what_it_changed():
  result = listing('configs/carracing.py:small')
  assert result.returncode == 0, result.stderr[-2000:]
  names = [r.name for r in config_lib.fields(config_lib.Config())]
  assert all(re.search(rf'^[*+ ] {re.escape(n)} ', result.stdout, re.M) for n in names)
  mark, _, value, default, kind, meaning = row(result.stdout, 'env.action_repeat')
  assert (mark, value, default, kind) == ('*', '4', '1', 'int')
  assert meaning.startswith('the agent acts every this many frames')
  assert row(result.stdout, 'env.name')[0] == ' '  # the small preset keeps CarRacing-v3
  assert row(result.stdout, 'vae.learning_rate')[2:5] == ['0.0001', '0.0001', 'float']


def test_changed_lists_only_the_presets_and_the_overrides_fields():
  result = listing('configs/carracing.py:small', '--changed', '--config.vae.z_size=16',
                   '--config.env.action_repeat', '2')
  assert result.returncode == 0, result.stderr[-2000:]
  rows = result.stdout.splitlines()[1:-1]
  assert rows and all(r[0] in '*+' for r in rows), result.stdout
  assert row(result.stdout, 'vae.z_size')[:4] == ['+', 'vae.z_size', '16', '32']
  assert row(result.stdout, 'env.action_repeat')[:4] == ['+', 'env.action_repeat', '2', '1']
  assert row(result.stdout, 'controller.mode')[:4] == ['*', 'controller.mode', 'real', 'dream']
  assert not re.search(r'^. env\.name ', result.stdout, re.M)


def test_a_run_dirs_config_is_listed(tmp_path):
  config = debug_config()
  (tmp_path / 'config.json').write_text(config_lib.to_json(config))
  result = listing(str(tmp_path), '--changed')
  assert result.returncode == 0, result.stderr[-2000:]
  assert row(result.stdout, 'env.max_steps')[:4] == ['*', 'env.max_steps', '40', '1000']


def test_bad_specs_and_overrides_are_one_message_and_exit_2():
  cases = [(['configs/carracing.py:huge'], "has no preset 'huge'; its presets: debug, small"),
           (['configs/carracing.py:small', '--config.env.bogus=1'],
            "unknown config field 'env.bogus'"),
           (['configs/carracing.py:small', '--config.vae.z_size=0'], 'vae.z_size must be > 0'),
           ([], 'takes one FILE:PRESET or run dir')]
  for args, message in cases:
    result = listing(*args)
    assert result.returncode == 2, (args, result.stdout[-2000:], result.stderr[-2000:])
    assert message in result.stderr and 'Traceback' not in result.stderr, result.stderr


def test_a_stage_logs_what_its_config_changes_from_the_defaults(tmp_path):
  result = run_script('collect_rollouts', f'--run_dir={tmp_path / "run"}',
                      '--config.collect.num_rollouts=1')
  logged = re.findall(r'config: (\S+)=(\S+) \(default (\S+)\)$', result.stderr, re.M)
  preset = {(f.name, str(f.value), str(f.default))
            for f in config_lib.changed(config_lib.load(DEBUG)) if f.name != 'collect.num_rollouts'}
  assert preset < set(logged), result.stderr[-3000:]
  assert ('env.max_steps', '40', '1000') in logged
  assert ('collect.num_rollouts', '1', '200') in logged  # the override, as run
  assert not any(name == 'env.name' for name, _, _ in logged)  # unchanged: not logged
