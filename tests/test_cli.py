"""Stage scripts as a user runs them: what is refused before anything is written, and which
command writes RUN/config.json. Every refusal is one message naming the file or flag, exit 2."""

import ctypes
import json
import os
import subprocess
import sys

import pytest

from conftest import DEBUG, REPO, copy_run, run_script, script_env
from wm import config as config_lib


def refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  for phrase in phrases:
    assert phrase in result.stderr, (phrase, result.stderr[-3000:])


def listing(folder) -> list[str]:
  """Everything under `folder` (relative paths), or None when it does not exist."""
  if not os.path.exists(folder):
    return None
  return sorted(os.path.relpath(os.path.join(root, name), folder)
                for root, dirs, files in os.walk(folder) for name in dirs + files)


def started_run(folder, **fields) -> str:
  """A run dir holding only the debug preset's RUN/config.json (as collect writes it)."""
  config = config_lib.load(DEBUG)
  for key, value in fields.items():
    config_lib.override(config, key.replace('__', '.'), value)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    f.write(config_lib.to_json(config) + '\n')
  return str(folder)


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


# ---------------------------------------------------------------------------- --config


def test_unknown_preset_names_the_file_and_its_presets(tmp_path):
  run_dir = tmp_path / 'run'
  result = run_script('collect_rollouts', f'--run_dir={run_dir}',
                      '--config=configs/carracing.py:debgu', check=False)
  refused(result, 'configs/carracing.py', "'debgu'", 'debug, small, paper')
  assert not run_dir.exists()


BROKEN_CONFIGS = {
    'syntax': ('def get_config(preset):\n  return (\n', 'SyntaxError', 'line 2'),
    'import': ('import wm.no_such_module\n', "No module named 'wm.no_such_module'", 'line 1'),
    'get_config': ('def get_config(preset):\n  raise KeyError(preset)\n', "KeyError: 'x'",
                   'line 2'),
}


@pytest.mark.parametrize('kind', sorted(BROKEN_CONFIGS))
def test_a_config_file_that_fails_names_the_file_and_line(tmp_path, kind):
  source, error, line = BROKEN_CONFIGS[kind]
  path = tmp_path / 'mine.py'
  path.write_text(source)
  run_dir = tmp_path / 'run'
  result = run_script('collect_rollouts', f'--run_dir={run_dir}', f'--config={path}:x',
                      check=False)
  refused(result, str(path), error, line)
  assert not run_dir.exists()


def test_a_missing_config_file_exits_2(tmp_path):
  run_dir = tmp_path / 'run'
  result = run_script('train_vae', f'--run_dir={run_dir}', '--config=configs/nothing.py:debug',
                      check=False)
  refused(result, "config file 'configs/nothing.py' not found")
  assert not run_dir.exists()


# ---------------------------------------------------------------------------- flags


@pytest.mark.parametrize('script,flags', [
    ('train_vae', ('run_dir', 'config', 'save_config', 'check_numerics')),
    ('shard_rollouts', ('run_dir', 'config', 'num_tasks', 'task_index', 'parallelism')),
])
def test_help_lists_the_shared_flags_beside_the_scripts_own(script, flags):
  # absl's --help lists only the main module's flags; cli.run adds the ones it defines.
  result = run_script(script, '--help', config=None, check=False)
  for flag in flags:
    assert f'  --{flag}:' in result.stdout or f'  --[no]{flag}:' in result.stdout, (
        flag, result.stdout[-3000:])


@pytest.mark.parametrize('args,message', [
    (['--config.seed'], '--config.seed needs a value: --config.seed=VALUE'),
    (['--nonsense_flag=1'], "Unknown command line flag 'nonsense_flag'"),
    (['stray'], "unexpected arguments ['stray']; flags look like --name=value"),
])
def test_a_bad_flag_is_refused_before_anything_is_written(tmp_path, args, message):
  run_dir = tmp_path / 'run'
  result = run_script('collect_rollouts', f'--run_dir={run_dir}', *args, check=False)
  refused(result, message)
  assert not run_dir.exists()


STAGE_SCRIPTS = ('collect_rollouts', 'shard_rollouts', 'train_vae', 'encode_rollouts',
                 'train_sequence_model', 'train_controller', 'evaluate', 'play')


def run_without_tensorflow(tmp_path, script: str, *args: str,
                           config: str | None = DEBUG) -> subprocess.CompletedProcess:
  """Runs a script (or `-m wm`), with --config=`config` unless None, and a `tensorflow` that
  fails when imported first on the path: a refusal that still comes out whole came before
  TensorFlow was needed."""
  fake = tmp_path / 'site' / 'tensorflow'
  fake.mkdir(parents=True, exist_ok=True)
  (fake / '__init__.py').write_text('raise ImportError("tensorflow was imported")\n')
  env = script_env()
  env['PYTHONPATH'] = str(fake.parent) + os.pathsep + env['PYTHONPATH']
  target = ['-m', 'wm'] if script == '-m wm' else [os.path.join(REPO, 'scripts', script + '.py')]
  config_flag = [f'--config={config}'] if config else []
  return subprocess.run([sys.executable, *target, *config_flag, *args],
                        capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


@pytest.mark.parametrize('script', [*STAGE_SCRIPTS, '-m wm'])
def test_a_wrong_config_field_is_refused_before_tensorflow_loads(tmp_path, script):
  # A mistyped field is answered at once, not after the seconds TensorFlow takes to import.
  run_dir = tmp_path / 'run'
  result = run_without_tensorflow(tmp_path, script, f'--run_dir={run_dir}',
                                  '--config.seq.hidden_sise=8')
  refused(result, "unknown config field 'seq.hidden_sise'", 'hidden_size')
  assert not run_dir.exists()


@pytest.mark.parametrize('written,message', [
    ('DONE', 'was trained with seq.judge_data=same (its DONE)'),
    ('judge_data.json', 'started training with seq.judge_data=same')])
def test_a_judge_of_other_data_is_refused_before_tensorflow_loads(tmp_path, written, message):
  # seq.judge_data=bootstrap asked of a judge trained (its DONE), or started and stopped (what it
  # learns from, recorded as it starts), on M's own rollouts: kept, or finished on a mix of both.
  judged = {'seq.judges': 1, 'controller.trials': 2, 'controller.eval_episodes': 2}
  run_dir = started_run(tmp_path / 'run', **{k.replace('.', '__'): v for k, v in judged.items()})
  judge_dir = os.path.join(run_dir, 'seq', 'judges', '1')
  os.makedirs(judge_dir)
  with open(os.path.join(judge_dir, written), 'w') as f:
    json.dump({'data': 'same'}, f)
  for judge in ([], ['--judge=1']):
    result = run_without_tensorflow(tmp_path, 'train_sequence_model', f'--run_dir={run_dir}',
                                    *(f'--config.{k}={v}' for k, v in judged.items()),
                                    '--config.seq.judge_data=bootstrap', *judge)
    refused(result, f'{judge_dir} {message}', 'remove that folder')
  assert sorted(os.listdir(judge_dir)) == [written]


@pytest.mark.parametrize('script,args,message', [
    ('benchmark_seq', ['--bucket_steps=4', '--lengths_from={tmp}'], 'no rollouts in {tmp}'),
    ('benchmark_seq', ['--pack'], '--lengths_from=: no rollouts in rollouts'),
    ('benchmark_cpu_kernels', ['--run_dir={tmp}', '--work=seq,vea'], '--work: unknown vea')])
def test_a_benchmark_given_nothing_to_measure_is_refused_before_tensorflow_loads(
    tmp_path, script, args, message):
  result = run_without_tensorflow(tmp_path, script, *(a.format(tmp=tmp_path) for a in args),
                                  config=None)
  refused(result, message.format(tmp=tmp_path))


@pytest.mark.parametrize('judges,message', [(2, 'the judges are 1 to 2'),
                                            (0, 'seq.judges=0: there is no judge to train')])
def test_a_judge_that_is_not_configured_is_refused_before_tensorflow_loads(tmp_path, judges,
                                                                            message):
  result = run_without_tensorflow(tmp_path, 'train_sequence_model', f'--run_dir={tmp_path}/run',
                                  '--judge=3', f'--config.seq.judges={judges}',
                                  '--config.controller.trials=6',
                                  '--config.controller.eval_episodes=6')
  refused(result, f'--judge=3 but seq.judges={judges}', message)
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('script,missing,stage', [
    ('train_vae', 'no sharded rollouts of the train split', 'shard'),
    ('encode_rollouts', 'no trained V (VAE)', 'vae'),
    ('train_sequence_model', 'no encoded rollouts of the train split', 'encode'),
    ('train_controller', 'no trained V (VAE)', 'vae'),
    ('evaluate', 'no trained V (VAE)', 'vae')])
def test_a_stage_without_its_input_names_the_stage_before_tensorflow_loads(tmp_path, script,
                                                                           missing, stage):
  # Nothing is written first: no stage folder, no snapshot (one would replace the snapshot of
  # the stage's last run, which made its outputs).
  empty = started_run(tmp_path / 'empty')
  result = run_without_tensorflow(tmp_path, script, f'--run_dir={empty}')
  refused(result, missing, f'--stages={stage}')
  assert listing(empty) == ['config.json']


def test_a_controller_start_that_is_not_a_run_is_refused_before_tensorflow_loads(
    tmp_path, controller_models):
  run_dir = copy_run(controller_models, str(tmp_path / 'run'))
  result = run_without_tensorflow(tmp_path, 'train_controller', f'--run_dir={run_dir}',
                                  f'--config.controller.start_from={tmp_path / "nowhere"}')
  refused(result, 'controller.start_from=', 'is not a folder')
  assert not os.path.exists(os.path.join(run_dir, 'controller', 'es_state.npz'))


def test_rank_dream_refuses_what_it_cannot_rank_before_tensorflow_loads(tmp_path):
  result = run_without_tensorflow(tmp_path, 'rank_dream', f'--run_dir={tmp_path}',
                                  '--params=a.npz,b.npz', '--results=a.json,b.json')
  refused(result, 'give 3 or more controllers')


@pytest.mark.parametrize('output', ['side/seed9.json', 'seed9.txt'])
def test_a_side_result_that_is_not_a_file_name_is_refused_before_anything_is_written(
    tmp_path, output):
  run_dir = tmp_path / 'run'
  result = run_without_tensorflow(tmp_path, 'evaluate', f'--run_dir={run_dir}',
                                  '--policy=random', f'--output={output}')
  refused(result, f'--output={output}', 'a file name ending in .json')
  assert not run_dir.exists()  # not even its snapshot-NAME/


# ---------------------------------------------------------------------------- env.name


@pytest.mark.parametrize('exists', [False, True])
def test_unknown_env_name_writes_nothing(tmp_path, exists):
  run_dir = tmp_path / 'run'
  if exists:
    run_dir.mkdir()
  result = run_script('collect_rollouts', f'--run_dir={run_dir}',
                      '--config.env.name=NoSuchEnv-v0', check=False)
  refused(result, "env.name='NoSuchEnv-v0'", 'CarRacing-v3')
  assert listing(run_dir) == ([] if exists else None)


def test_unknown_env_name_on_a_later_stage_writes_nothing(tmp_path):
  run_dir = started_run(tmp_path / 'run')
  result = run_script('train_vae', f'--run_dir={run_dir}', '--config.env.name=NoSuchEnv-v0',
                      config=None, check=False)
  refused(result, "env.name='NoSuchEnv-v0'")
  assert listing(run_dir) == ['config.json']


# ---------------------------------------------------------------------------- the run dir


def test_a_file_given_as_run_dir_is_refused(tmp_path):
  path = tmp_path / 'notes.txt'
  path.write_text('not a run')
  result = run_script('collect_rollouts', f'--run_dir={path}', check=False)
  refused(result, str(path), 'is a file, not a folder')
  assert path.read_text() == 'not a run'


def test_a_file_where_a_folder_of_the_run_dir_belongs_is_refused(tmp_path):
  (tmp_path / 'taken').write_text('a file where a folder belongs')
  run_dir = tmp_path / 'taken' / 'run'
  result = run_script('collect_rollouts', f'--run_dir={run_dir}', check=False)
  refused(result, f'{tmp_path / "taken"} is a file where a folder is expected', '--run_dir')


def without_file_permission_override() -> None:
  """Runs in the child before exec: drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
  capability bounding set, so even root obeys file modes after the exec (root ignores chmod)."""
  libc = ctypes.CDLL(None, use_errno=True)
  for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
      raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP)')


def run_unprivileged(*argv: str) -> subprocess.CompletedProcess:
  preexec = without_file_permission_override if os.geteuid() == 0 else None
  return subprocess.run(list(argv), capture_output=True, text=True, timeout=300,
                        env=script_env(), cwd=REPO, preexec_fn=preexec)


@pytest.fixture
def read_only_folder(tmp_path):
  """A folder this user (root included, see above) truly cannot write into."""
  folder = tmp_path / 'read_only'
  folder.mkdir()
  folder.chmod(0o555)
  probe = run_unprivileged(sys.executable, '-c', f'open({str(folder / "x")!r}, "w")')
  if probe.returncode == 0:
    os.remove(folder / 'x')
    folder.chmod(0o755)
    pytest.skip('file modes do not stop this user from writing here')
  yield folder
  folder.chmod(0o755)


def test_a_new_run_dir_in_a_read_only_folder_is_refused(read_only_folder):
  run_dir = read_only_folder / 'run'
  result = run_unprivileged(sys.executable, os.path.join(REPO, 'scripts', 'collect_rollouts.py'),
                            f'--run_dir={run_dir}', f'--config={DEBUG}')
  refused(result, str(run_dir), 'Permission denied', '--run_dir')
  assert not run_dir.exists()


def test_a_read_only_run_is_refused_before_the_stage_starts(tmp_path):
  run_dir = started_run(tmp_path / 'run')
  os.chmod(run_dir, 0o555)
  try:
    probe = run_unprivileged(sys.executable, '-c', f'open({run_dir + "/x"!r}, "w")')
    if probe.returncode == 0:
      pytest.skip('file modes do not stop this user from writing here')
    result = run_unprivileged(sys.executable, os.path.join(REPO, 'scripts', 'collect_rollouts.py'),
                              f'--run_dir={run_dir}')
  finally:
    os.chmod(run_dir, 0o755)
  refused(result, f'cannot write into {run_dir}', 'Permission denied', '--run_dir')
  assert listing(run_dir) == ['config.json']


@pytest.mark.parametrize('content,message', [
    ('{"preset": "debug", "seed": ', 'is not valid JSON'),
    ('[1, 2]', 'holds a JSON list, not a config'),
    ('{"vae": {"mystery": 1}}', "unknown config field 'vae.mystery'"),
])
def test_a_broken_run_config_names_the_file_and_the_fix(tmp_path, content, message):
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  (run_dir / 'config.json').write_text(content)
  result = run_script('train_vae', f'--run_dir={run_dir}', config=None, check=False)
  refused(result, str(run_dir / 'config.json'), message, '--config=FILE:PRESET')
  assert listing(run_dir) == ['config.json']
  assert (run_dir / 'config.json').read_text() == content


def test_a_truncated_run_config_points_at_the_snapshot_copy(tmp_path):
  run_dir = started_run(tmp_path / 'run')
  snapshot = os.path.join(run_dir, 'rollouts', 'snapshot')
  os.makedirs(snapshot)
  os.rename(os.path.join(run_dir, 'config.json'), os.path.join(snapshot, 'config.json'))
  with open(os.path.join(run_dir, 'config.json'), 'w') as f:
    f.write(read(os.path.join(snapshot, 'config.json'))[:40])
  result = run_script('train_sequence_model', f'--run_dir={run_dir}', config=None, check=False)
  refused(result, 'is not valid JSON',
          f'cp {os.path.join(snapshot, "config.json")} {os.path.join(run_dir, "config.json")}')


# ---------------------------------------------------------------------------- no --config


@pytest.mark.parametrize('script,exists', [('evaluate', False), ('train_vae', True),
                                           ('train_controller', True)])
def test_a_later_stage_refuses_a_run_dir_that_is_no_run(tmp_path, script, exists):
  run_dir = tmp_path / 'mistyped'
  if exists:
    run_dir.mkdir()
  result = run_script(script, f'--run_dir={run_dir}', config=None, check=False)
  refused(result, f'run dir {run_dir} ' + ('has no config.json' if exists else 'does not exist'),
          '--config=FILE:PRESET')
  assert listing(run_dir) == ([] if exists else None)


def test_collect_says_which_preset_it_starts_a_run_with(tmp_path):
  run_dir = tmp_path / 'run'
  result = run_script('collect_rollouts', f'--run_dir={run_dir}', '--config.collect.num_rollouts=1',
                      '--config.env.max_steps=8', config=None)
  assert f'using the default config {config_lib.DEFAULT_CONFIG}' in result.stderr, result.stderr
  saved = json.loads((run_dir / 'config.json').read_text())
  assert (saved['preset'], saved['collect']['num_rollouts']) == ('small', 1)


# ---------------------------------------------------------------------------- RUN/config.json


def test_overrides_of_a_later_stage_apply_to_it_alone(tmp_path):
  run_dir = str(tmp_path / 'run')
  config_path = os.path.join(run_dir, 'config.json')
  snapshot = os.path.join(run_dir, 'rollouts', 'snapshot')
  tiny = ['--config.env.max_steps=8']
  run_script('collect_rollouts', f'--run_dir={run_dir}', '--config.collect.num_rollouts=2', *tiny)
  started = read(config_path)
  assert json.loads(started)['collect']['num_rollouts'] == 2

  # A one-off override: the stage runs with it and its snapshot records it; the run keeps 2.
  run_script('collect_rollouts', f'--run_dir={run_dir}', '--config.collect.num_rollouts=1',
             config=None)
  assert read(config_path) == started
  assert json.loads(read(os.path.join(snapshot, 'overrides.json'))) == {
      'collect.num_rollouts': '1'}
  assert json.loads(read(os.path.join(snapshot, 'config.json')))['collect']['num_rollouts'] == 1

  # --save_config keeps it for the later stages.
  run_script('collect_rollouts', f'--run_dir={run_dir}', '--config.collect.num_rollouts=1',
             '--save_config', config=None)
  assert json.loads(read(config_path))['collect']['num_rollouts'] == 1

  # An explicit --config re-chooses the run's config, its overrides included.
  run_script('collect_rollouts', f'--run_dir={run_dir}', '--config.collect.num_rollouts=2', *tiny)
  assert read(config_path) == started
