"""The run directory: where each stage reads and writes, and its DONE markers.

    RUN/config.json                  resolved config of the latest stage run
    RUN/rollouts/                    stage 1: rollout-000123.npz
    RUN/records/{train,valid}/       stage 2: raw.tfrecord-00003-of-00074 + manifest.json
    RUN/vae/                         stage 3
    RUN/encoded/{train,valid}/       stage 4: encoded.tfrecord-00007-of-00012 + manifest.json
    RUN/seq/                         stage 5
    RUN/controller/                  stage 6
    RUN/play/                        stage 7
    RUN/<stage>/snapshot/            code + config archive of the stage's last run
    RUN/<stage>/DONE                 written last: the stage finished
"""

from __future__ import annotations

import os
import time

from wm import fileio

STAGE_DIRS = {
    'collect': 'rollouts',
    'shard': 'records',
    'vae': 'vae',
    'encode': 'encoded',
    'seq': 'seq',
    'controller': 'controller',
    'evaluate': 'evaluate',
    'play': 'play',
}
SPLITS = ('train', 'valid')


class Run:
  """Paths inside one run directory. Any stage folder can be redirected to share data."""

  def __init__(self, root: str, overrides: dict[str, str] | None = None):
    self.root = os.path.abspath(root)
    self._overrides = {k: os.path.abspath(v) for k, v in (overrides or {}).items() if v}

  def stage_dir(self, stage: str) -> str:
    if stage not in STAGE_DIRS:
      raise KeyError(f'unknown stage {stage!r}; stages: {sorted(STAGE_DIRS)}')
    return self._overrides.get(stage, os.path.join(self.root, STAGE_DIRS[stage]))

  @property
  def config_path(self) -> str:
    return os.path.join(self.root, 'config.json')

  def split_dir(self, stage: str, split: str) -> str:
    assert split in SPLITS, (split, SPLITS)
    return os.path.join(self.stage_dir(stage), split)

  def done_path(self, stage: str) -> str:
    return os.path.join(self.stage_dir(stage), 'DONE')

  def is_done(self, stage: str) -> bool:
    return os.path.exists(self.done_path(stage))

  def mark_done(self, stage: str, **info) -> None:
    fileio.write_json(self.done_path(stage), {'finished_at': time.strftime('%F %T'), **info})

  def clear_done(self, stage: str) -> None:
    try:
      os.remove(self.done_path(stage))
    except FileNotFoundError:
      pass
