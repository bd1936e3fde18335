"""Stage snapshots: the code, config and context that produced a stage's outputs.

`RUN/<stage>/snapshot/` holds
    code.tar.gz       wm/, scripts/, configs/, slurm/ as they were when the stage started: the
                      code and configs, not media, data or any file over 1 MB (logged, LEAVE_OUT)
    config.json       the resolved config;  overrides.json  the command-line overrides
    command.txt       the exact command and working directory
    git.txt, git.diff the revision, status and uncommitted diff (when run from a checkout)
    pip_freeze.txt    installed distributions and versions
    host.json         host name, pid, time, Python, SLURM job / array / step ids
It is written before the stage does any work, replaced whole on a rerun (never half-written).
A rerun of a finished stage that fails before finishing it again (a mismatched model found once
TensorFlow loads, a corrupted shard) puts the last run's snapshot back (`set_aside`, `put_back`):
the stage's outputs are still that run's.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time

from absl import logging

from wm import config as config_lib
from wm.infra import fileio

CODE_DIRS = ('wm', 'scripts', 'configs', 'slurm')
_SKIP = ('__pycache__', '.pyc', '.claim')
# Not code: results kept beside the configs (configs/results/small-agent.mp4, 720 KB, went into
# every stage's archive) and data. Left out of code.tar.gz by extension, or by size.
LEAVE_OUT = ('.mp4', '.gif', '.webm', '.avi', '.png', '.jpg', '.jpeg', '.npz', '.npy', '.h5',
             '.pkl', '.tfrecord')
MAX_FILE_BYTES = 1 << 20
FOLDER = 'snapshot'  # STAGE/snapshot/: what made the stage's own result
PREVIOUS = '.previous'  # STAGE/snapshot.previous/: the last run's, while a rerun may yet fail


def folder(view: str | None = None) -> str:
  """STAGE/snapshot/ for the stage's own result (wm/infra/changes.py compares its config);
  STAGE/snapshot-VIEW/ beside it for another view of the stage (play's random or dream episodes,
  a side evaluation NAME.json), which leaves the stage's own alone."""
  return f'{FOLDER}-{view}' if view else FOLDER


def is_folder(name: str) -> bool:
  """Whether a stage's subfolder `name` is one of its snapshots (`folder`), or one set aside."""
  name = name.removesuffix(PREVIOUS)
  return name == FOLDER or name.startswith(FOLDER + '-')


def set_aside(stage_dir: str, name: str) -> None:
  """Moves STAGE/name/ to STAGE/name.previous/ (replacing an older one left by a killed run), so
  that `put_back` can restore it; nothing when there is none (or a concurrent task moved it)."""
  current = os.path.join(stage_dir, name)
  if not os.path.isdir(current):
    return
  shutil.rmtree(current + PREVIOUS, ignore_errors=True)
  try:
    os.rename(current, current + PREVIOUS)
  except OSError:
    pass  # a concurrent task of the same stage moved it first: its own rerun keeps it


def put_back(stage_dir: str, name: str) -> bool:
  """Replaces STAGE/name/ with the one `set_aside` kept; whether there was one."""
  current = os.path.join(stage_dir, name)
  if not os.path.isdir(current + PREVIOUS):
    return False
  shutil.rmtree(current, ignore_errors=True)
  try:
    os.rename(current + PREVIOUS, current)
  except OSError:
    return False
  return True


def drop_previous(stage_dir: str, name: str) -> None:
  """Deletes what `set_aside` kept: the rerun finished, so its own snapshot describes the stage."""
  shutil.rmtree(os.path.join(stage_dir, name) + PREVIOUS, ignore_errors=True)


def write(stage_dir: str, config: config_lib.Config, overrides: dict[str, str],
          argv: list[str] | None = None, repo_root: str = config_lib.REPO_ROOT,
          name: str = 'snapshot') -> str:
  """Writes `stage_dir/name/` atomically and returns its path."""
  argv = sys.argv if argv is None else argv
  final = os.path.join(stage_dir, name)
  with fileio.atomic_dir(final) as tmp:
    _write_code_archive(os.path.join(tmp, 'code.tar.gz'), repo_root)
    _put(tmp, 'config.json', config_lib.to_json(config) + '\n')
    _put(tmp, 'overrides.json', json.dumps(overrides, indent=2) + '\n')
    _put(tmp, 'command.txt', f'cd {shlex.quote(os.getcwd())} && '
         f'{shlex.quote(sys.executable)} {shlex.join(argv)}\n')
    revision, status, diff = _git(repo_root)
    _put(tmp, 'git.txt', f'revision: {revision}\n{status}')
    _put(tmp, 'git.diff', diff)
    _put(tmp, 'pip_freeze.txt', pip_freeze())
    _put(tmp, 'host.json', json.dumps(host_info(), indent=2) + '\n')
  return final


def extract_code(snapshot_dir: str, dest: str) -> str:
  """Unpacks a snapshot's code archive into `dest` (refusing paths that leave it)."""
  archive = os.path.join(snapshot_dir, 'code.tar.gz')
  with tarfile.open(archive) as tar:
    tar.extractall(dest, filter='data')
  return dest


def pip_freeze() -> str:
  dists = sorted({(d.metadata['Name'] or '?', d.version) for d in importlib.metadata.distributions()},
                 key=lambda nv: nv[0].lower())
  return ''.join(f'{name}=={version}\n' for name, version in dists)


def host_info() -> dict:
  slurm = {k: v for k, v in os.environ.items()
           if k in ('SLURM_JOB_ID', 'SLURM_ARRAY_JOB_ID', 'SLURM_ARRAY_TASK_ID', 'SLURM_STEP_ID',
                    'SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_JOB_NODELIST', 'SLURM_RESTART_COUNT',
                    'SLURM_JOB_PARTITION', 'CUDA_VISIBLE_DEVICES')}
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'time': time.strftime('%F %T %z'),
          'python': sys.version.split()[0], 'platform': platform.platform(), 'env': slurm}


def _put(folder: str, name: str, text: str) -> None:
  with open(os.path.join(folder, name), 'w') as f:
    f.write(text)


def _write_code_archive(path: str, repo_root: str) -> list[str]:
  """Archives CODE_DIRS of `repo_root` into `path`; returns what it left out (and logs it)."""
  left_out = []

  def keep(info: tarfile.TarInfo):
    if any(s in info.name for s in _SKIP):
      return None
    if info.isfile() and (info.name.lower().endswith(LEAVE_OUT) or info.size > MAX_FILE_BYTES):
      left_out.append(f'{info.name} ({info.size / 1024:.0f} KB)')
      return None
    return info

  with tarfile.open(path, 'w:gz', compresslevel=6) as tar:
    for name in CODE_DIRS:
      src = os.path.join(repo_root, name)
      if os.path.isdir(src):
        tar.add(src, arcname=name, filter=keep)
  if left_out:
    logging.info('snapshot: code.tar.gz leaves out media, data and files over %d KB: %s',
                 MAX_FILE_BYTES // 1024, ', '.join(left_out))
  return left_out


def _git(repo_root: str) -> tuple[str, str, str]:
  def run(*args: str) -> str:
    try:
      return subprocess.run(['git', '-C', repo_root, *args], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
      return ''
  revision = run('rev-parse', 'HEAD').strip() or 'not a git checkout'
  return revision, run('status', '--short'), run('diff', 'HEAD')
