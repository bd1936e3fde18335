"""Rollout files: one compressed .npz per episode, written atomically, read without pickle.

A rollout of T steps holds
    frames      (T+1, H, W, 3) uint8   frame t is what the policy saw before action t; the last
                                       one is the observation after the final action
    actions     (T, A) float32         action vectors (one-hot for Discrete spaces)
    rewards     (T,) float32           reward after action t
    terminated  (T,) bool              the episode ended after action t (e.g. lap finished)
    truncated   (T,) bool              the episode was cut after action t (env.max_steps)
    seed        () int64               the env/policy seed of this rollout
and is stored as RUN/rollouts/rollout-000123.npz, 123 being its index in [0, num_rollouts).
"""

from __future__ import annotations

import glob
import os
import re
import zipfile
import zlib

import numpy as np

from wm.infra import fileio, runs
from wm.errors import DataError

_NAME = re.compile(r'^rollout-(\d{6,})\.npz$')
KEYS = ('frames', 'actions', 'rewards', 'terminated', 'truncated', 'seed')
DTYPES = {'frames': np.uint8, 'actions': np.float32, 'rewards': np.float32,
          'terminated': np.bool_, 'truncated': np.bool_, 'seed': np.int64}


def path_for(folder: str, index: int) -> str:
  return os.path.join(folder, f'rollout-{index:06d}.npz')


def list_indices(folder: str) -> list[int]:
  """Indices of the complete rollouts in `folder` (temporary files are never listed)."""
  if not os.path.isdir(folder):
    return []
  return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(folder)) if m)


CLEANED = runs.CLEANED  # in RUN/rollouts once `python -m wm clean --rollouts` removed them


def require_kept(folder: str, needed_for: str) -> None:
  """Refuses (DataError) to go on when `folder`'s rollouts were removed after sharding
  (wm/infra/clean.py): `needed_for` says what would have read them."""
  record = os.path.join(folder, CLEANED)
  if os.path.exists(record):
    raise DataError(f'the rollouts of {folder} were removed once sharded ({record}: python -m '
                    f'wm clean --rollouts), and {needed_for} needs them; the shards and every '
                    'later stage are as they were. For more data, start another run dir')


def list_paths(folder: str) -> list[str]:
  return [path_for(folder, i) for i in list_indices(folder)]


def rollout_seed(experiment_seed: int, index: int) -> int:
  """The seed of rollout `index`: independent of which worker or job collects it."""
  return int(np.random.SeedSequence([experiment_seed, index]).generate_state(1)[0])


def save(path: str, rollout: dict[str, np.ndarray], compress_level: int = 1) -> None:
  """Writes an .npz (readable by np.load) atomically, deflate at `compress_level`."""
  validate(rollout, path)
  with fileio.atomic_path(path) as tmp:
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED, compresslevel=compress_level) as zf:
      for key in KEYS:
        with zf.open(key + '.npy', 'w', force_zip64=True) as f:
          np.lib.format.write_array(f, np.asarray(rollout[key]), allow_pickle=False)


def load(path: str) -> dict[str, np.ndarray]:
  """Reads and checks a rollout; a truncated or corrupted file raises a DataError naming it."""
  try:
    with np.load(path, allow_pickle=False) as data:
      rollout = {key: data[key] for key in KEYS}
  except FileNotFoundError:
    raise DataError(f'rollout file {path} does not exist') from None
  except (zipfile.BadZipFile, zlib.error, ValueError, KeyError, OSError, EOFError) as e:
    raise DataError(f'rollout file {path} is truncated or corrupted ({type(e).__name__}: {e}); '
                    'delete it and rerun collect_rollouts.py to collect it again') from None
  validate(rollout, path)
  return rollout


def validate(rollout: dict[str, np.ndarray], where: str) -> None:
  missing = [k for k in KEYS if k not in rollout]
  if missing:
    raise DataError(f'{where}: rollout lacks {missing}')
  for key, dtype in DTYPES.items():
    if np.asarray(rollout[key]).dtype != dtype:
      raise DataError(f'{where}: {key} has dtype {np.asarray(rollout[key]).dtype}, expected '
                      f'{np.dtype(dtype)}')
  steps = len(rollout['actions'])
  frames = rollout['frames']
  if frames.ndim != 4 or frames.shape[0] != steps + 1 or frames.shape[3] != 3:
    raise DataError(f'{where}: frames shape {frames.shape}, expected ({steps + 1}, H, W, 3) '
                    f'for {steps} actions')
  for key in ('rewards', 'terminated', 'truncated'):
    if rollout[key].shape != (steps,):
      raise DataError(f'{where}: {key} shape {rollout[key].shape}, expected ({steps},)')


def stale_cleanup(folder: str) -> None:
  """Removes temporary files of dead processes (a worker killed while writing)."""
  fileio.remove_stale_tmp_files(folder)
  for claim in glob.glob(os.path.join(glob.escape(folder), '*.claim')):
    with fileio.claim(claim[:-len('.claim')]):
      pass  # taking over and releasing a dead process's claim removes it
