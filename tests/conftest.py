"""Shared test set-up: run stage scripts as a user would, and one debug data set per test run.

The session fixtures build the debug preset's data once (collect, shard, ...) in a temporary run
dir; later stages' tests copy or read it instead of collecting again. `make test` runs the suite
on several pytest-xdist workers (processes): the first worker to ask for a data set builds it,
under a file lock, in the folder the workers share, and the others wait for it and read it, so
each is built once per run, not once per worker. The tests that submit to the local SLURM
cluster run one after another on one worker (the `slurm` marker puts them in one xdist group):
the cluster's one node is sized for one such test at a time.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = 'configs/carracing.py:debug'


def debug_config():
  """A fresh copy of the debug preset's config (tests change it freely)."""
  from wm import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.load(DEBUG)


def script_env() -> dict[str, str]:
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def expected_cpu_kernels() -> str:
  """What a training stage runs on: oneDNN, which it asks for, unless this environment says 0."""
  return 'Eigen' if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '0' else 'oneDNN'


def run_script(name: str, *args: str, check: bool = True, timeout: float = 300,
               config: str | None = DEBUG) -> subprocess.CompletedProcess:
  """Runs scripts/<name>.py with `args` (and --config=debug unless config=None)."""
  argv = [sys.executable, os.path.join(REPO, 'scripts', name + '.py'), *args]
  if config and not any(a.startswith('--config=') for a in args):
    argv.append(f'--config={config}')
  result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=script_env(),
                          cwd=REPO)
  if check and result.returncode != 0:
    raise AssertionError(f'{name} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n'
                         f'stderr:\n{result.stderr[-6000:]}')
  return result


def process_alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie or a dying process has ended: it only waits to be reaped)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
  except FileNotFoundError:
    return False


def child_pids(pid: int) -> list[int]:
  """The processes `pid` started that are still its children (any of its threads'; Linux /proc)."""
  children = []
  for task in os.listdir(f'/proc/{pid}/task'):
    try:
      with open(f'/proc/{pid}/task/{task}/children') as f:
        children += [int(p) for p in f.read().split()]
    except FileNotFoundError:  # the thread ended meanwhile
      pass
  return children


def copy_run(src: str, dst: str) -> str:
  shutil.copytree(src, dst, symlinks=True)
  return dst


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items) -> None:
  for item in items:
    if item.get_closest_marker('slurm'):
      item.add_marker(pytest.mark.xdist_group('slurm'))


UNGROUPED_SLURM_TESTS: list[str] = []  # what pytest-xdist failed to group: slurm_cluster fails them


def pytest_collection_finish(session) -> None:
  """Notes SLURM tests that pytest-xdist's --dist=loadgroup left ungrouped: it groups a test by a
  suffix it appends to its node id, which some pytest versions silently drop (9.2 with
  pytest-xdist 3.8), and then the tests of the one-node cluster run at once on every worker."""
  if session.config.getoption('loadgroup', False):  # on xdist's workers, with --dist=loadgroup
    UNGROUPED_SLURM_TESTS.extend(
        item.nodeid for item in session.items
        if item.get_closest_marker('slurm') and not item.nodeid.endswith('@slurm'))


def built_once(tmp_path_factory, name: str, build) -> str:
  """The folder `name`, made by build(folder) once per test run however many xdist workers ask:
  the first builds it while holding a lock, the others wait and reuse it. A build that failed
  (or was killed) left no NAME.built mark beside the folder, so the next to ask starts it again
  from nothing."""
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    shared = shared.parent  # every worker's own basetemp lies in the run's
  folder, built = shared / name, shared / f'{name}.built'
  with open(shared / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not built.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      build(str(folder))
      built.touch()
  return str(folder)


@pytest.fixture(scope='session')
def debug_data(tmp_path_factory) -> str:
  """A run dir with the debug preset's rollouts and shards (read-only: copy before changing)."""

  def build(run_dir):
    run_script('collect_rollouts', f'--run_dir={run_dir}', '--parallelism=2')
    run_script('shard_rollouts', f'--run_dir={run_dir}', '--parallelism=1')

  return built_once(tmp_path_factory, 'debug_run', build)


def copy_and_run(src: str, *scripts: str):
  """A build for built_once: `src` copied to FOLDER/run, then each script run on it."""

  def build(folder):
    run_dir = copy_run(src, os.path.join(folder, 'run'))
    for script in scripts:
      run_script(script, f'--run_dir={run_dir}')

  return build


@pytest.fixture(scope='session')
def debug_encoded(debug_data, tmp_path_factory) -> str:
  """A copy of `debug_data` with V trained (debug preset, exported to RUN/vae/export) and both
  splits encoded into RUN/encoded/{train,valid} (read-only: copy before changing)."""
  build = copy_and_run(debug_data, 'train_vae', 'encode_rollouts')
  return os.path.join(built_once(tmp_path_factory, 'debug_encoded', build), 'run')


@pytest.fixture(scope='session')
def synthetic_encoded(tmp_path_factory) -> str:
  """A run dir with only RUN/encoded/{train,valid}: a toy deterministic latent dynamics written
  with the real encoded schema (tests/synthetic_encoded_data.py). Read-only: copy to change."""
  import synthetic_encoded_data  # tests/ is on sys.path while pytest runs
  return built_once(tmp_path_factory, 'synthetic_encoded_run', synthetic_encoded_data.write)


@pytest.fixture(scope='session')
def debug_world_model(debug_encoded, tmp_path_factory) -> str:
  """A copy of `debug_encoded` with M trained too (debug preset): V and M as play and the
  controller load them (read-only: copy before changing)."""
  build = copy_and_run(debug_encoded, 'train_sequence_model')
  return os.path.join(built_once(tmp_path_factory, 'debug_world_model', build), 'run')


@pytest.fixture(scope='session')
def debug_agent(debug_world_model, tmp_path_factory) -> str:
  """A copy of `debug_world_model` with the controller evolved too (debug preset): all of V, M
  and C as play loads them (read-only: copy before changing)."""
  build = copy_and_run(debug_world_model, 'train_controller')
  return os.path.join(built_once(tmp_path_factory, 'debug_agent', build), 'run')


@pytest.fixture(scope='session')
def controller_models(tmp_path_factory) -> str:
  """A run dir holding V and M exports (randomly initialised ConvVAE and MDNRNN at debug sizes)
  and dream starts, for the controller stage's tests. Read-only: copy before changing."""
  import controller_models as models  # tests/ is on sys.path while pytest runs
  return built_once(tmp_path_factory, 'controller_run', models.write)


@pytest.fixture
def mpi_as_root(monkeypatch) -> None:
  """Lets Open MPI's mpiexec run as root (CI containers); no effect for other users."""
  monkeypatch.setenv('OMPI_ALLOW_RUN_AS_ROOT', '1')
  monkeypatch.setenv('OMPI_ALLOW_RUN_AS_ROOT_CONFIRM', '1')
