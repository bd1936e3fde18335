"""The run directory: where each stage reads and writes, and its DONE markers.

    RUN/config.json                  the run's config (see wm/infra/cli.py: written at its start)
    RUN/rollouts/                    stage 1: rollout-000123.npz
    RUN/records/{train,valid}/       stage 2: raw.tfrecord-00003-of-00074 + manifest.json
    RUN/vae/                         stage 3
    RUN/encoded/{train,valid}/       stage 4: encoded.tfrecord-00007-of-00012 + manifest.json
    RUN/seq/                         stage 5 (RUN/seq/judges/1/...: the Ms of seq.judges)
    RUN/controller/                  stage 6
    RUN/play/                        stage 7
    RUN/<stage>/snapshot/            code + config archive of the stage's last run
    RUN/<stage>/DONE                 written last: the stage finished

A stage knows what it was made from: its DONE records the fingerprint of its result (a hash of
RESULT_FILES) and the fingerprints of the results it read (INPUTS), so a stage whose inputs
changed since it ran (V trained further after encode and M used it) is found (`stale_reason`)
and redone or refused, never silently kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Iterable

from wm import config as config_lib
from wm.infra import fileio

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
JUDGES = 'judges'  # RUN/seq/judges/<i>: the Ms of seq.judges, each a seq stage folder of its own
WARM = 'warm'  # RUN/controller/warm: the dream search a real search starts from, a folder of its own
MANIFEST = 'manifest.json'  # a split of RUN/records or RUN/encoded: its shards, written last
CLEANED = 'CLEANED.json'  # in RUN/rollouts or RUN/records once `python -m wm clean` emptied it
# The files that identify a stage's result, relative to its folder.
RESULT_FILES = {
    'vae': ('export/model.json', 'export/model.weights.h5'),
    'encode': tuple(f'{split}/{MANIFEST}' for split in SPLITS),  # shards' sha256 + encoder
    'seq': ('export/model.json', 'export/model.weights.h5'),
    'controller': ('best.npz',),
}
# The config sections each stage's result depends on, beyond those of the stages before it
# (config_key): a rerun with other values there redoes or refuses the stage, and sweep runs that
# agree on them share the stage's outputs. 'preset' and 'play' never change a result.
STAGE_CONFIG = {
    'collect': ('seed', 'env', 'collect'),
    'shard': ('records',),
    'vae': ('data', 'vae'),
    'encode': ('encode',),
    'seq': ('seq',),
    'controller': ('controller',),
    'evaluate': (),
    'play': ('play',),
}
# Fields a finished stage continues from when raised (a top-up), instead of starting over.
TOP_UPS = {'collect.num_rollouts', 'vae.train_steps', 'seq.train_steps', 'seq.judges',
           'controller.generations'}
# Fields that change only how fast or where, never a result. (vae.precision and seq.precision
# change rounding, as the device does: a V or M trained in bfloat16 is kept when float32 is asked
# for, and shared by sweeps.)
NO_EFFECT = {'env.render_scale', 'encode.batch_size', 'controller.test_episodes',
             'vae.precision', 'seq.precision', 'records.reuse_from', 'collect.compress_level',
             'records.compress_level'}
# Fields that act only when another field has a value: {field: (that field, its value)}. Elsewhere
# they are left out, so a random-policy collection is not redone for a new exploration noise.
ONLY_WHEN = {'collect.controller_run': ('collect.policy', 'controller'),
             'collect.action_noise': ('collect.policy', 'controller')}


def flat_fields(config: dict[str, Any], sections: Iterable[str]) -> dict[str, Any]:
  """{dotted name: value} of a config dict's `sections` (a section or a top-level field),
  leaving out the fields in NO_EFFECT."""
  flat = {}
  for section in sections:
    value = config.get(section)
    if isinstance(value, dict):
      flat.update({f'{section}.{k}': v for k, v in value.items()})
    else:
      flat[section] = value
  for old, (new, convert) in config_lib.RENAMED.items():  # a config.json of older code
    if old in flat:
      flat[new] = convert(flat.pop(old))
  return {k: v for k, v in flat.items() if k not in NO_EFFECT and
          (k not in ONLY_WHEN or flat.get(ONLY_WHEN[k][0]) == ONLY_WHEN[k][1])}


def stage_fields(config: dict[str, Any], stage: str) -> dict[str, Any]:
  """The flattened config fields (dotted names) `stage` and the stages before it depend on."""
  names = list(STAGE_DIRS)
  return flat_fields(config, [s for name in names[:names.index(stage) + 1]
                              for s in STAGE_CONFIG[name]])


def config_key(config: dict[str, Any], stage: str) -> str:
  """A hash of stage_fields: equal keys mean the stage's result would be the same."""
  text = json.dumps(stage_fields(config, stage), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


# The results each stage reads: its own result is only valid for these exact inputs (the latent
# space of V, the latents M learned from, the models the controller acts through).
INPUTS = {
    'encode': ('vae',),
    'seq': ('encode',),
    'controller': ('vae', 'seq'),
    'evaluate': ('vae', 'seq', 'controller'),
    'play': ('vae', 'seq', 'controller'),
}


class Run:
  """Paths inside one run directory. Any stage folder can be redirected to share data."""

  def __init__(self, root: str, overrides: dict[str, str] | None = None):
    self.root = os.path.abspath(root)
    self._overrides = {k: os.path.abspath(v) for k, v in (overrides or {}).items() if v}

  def redirected(self, stage: str, folder: str) -> 'Run':
    """This run with `stage`'s folder moved to `folder` (e.g. a second M beside the first)."""
    return Run(self.root, {**self._overrides, stage: folder})

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
    """Writes DONE with `info`, the result's fingerprint and those of the inputs it read."""
    lineage = {'fingerprint': self.fingerprint(stage)} if stage in RESULT_FILES else {}
    if stage in INPUTS:
      lineage['inputs'] = {name: self.fingerprint(name) for name in INPUTS[stage]}
    fileio.write_json(self.done_path(stage),
                      {'finished_at': time.strftime('%F %T'), **info, **lineage})

  def fingerprint(self, stage: str) -> str | None:
    """A hash of the stage's result files as they are now; None while any is missing."""
    digest = hashlib.sha256()
    for name in RESULT_FILES[stage] + self._judge_files(stage):
      try:
        with open(os.path.join(self.stage_dir(stage), name), 'rb') as f:
          digest.update(f.read())
      except FileNotFoundError:
        return None
    return digest.hexdigest()[:16]

  def judge_indices(self) -> list[int]:
    """The indices of the folders of M's judges (seq.judges: RUN/seq/judges/<i>), ascending."""
    folder = os.path.join(self.stage_dir('seq'), JUDGES)
    if not os.path.isdir(folder):
      return []
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit())

  def _judge_files(self, stage: str) -> tuple[str, ...]:
    """M's judges (seq.judges: RUN/seq/judges/<i>) are part of its result: they judge the dream."""
    if stage != 'seq':
      return ()
    folder = os.path.join(self.stage_dir(stage), JUDGES)
    return tuple(os.path.join(JUDGES, str(i), file) for i in self.judge_indices()
                 for file in RESULT_FILES['seq']
                 if os.path.exists(os.path.join(folder, str(i), RESULT_FILES['seq'][0])))

  def stale_reason(self, stage: str) -> str | None:
    """Why the finished `stage` no longer fits its inputs (one changed since), or None.

    A DONE that records no inputs (written by an older version) cannot tell and is trusted.
    """
    if not self.is_done(stage) or stage not in INPUTS:
      return None
    try:
      recorded = fileio.read_json(self.done_path(stage)).get('inputs') or {}
    except (OSError, ValueError):
      return f'{self.done_path(stage)} is unreadable'
    for name, then in recorded.items():
      now = self.fingerprint(name)
      if now != then:
        state = 'is missing now' if now is None else f'changed since (result {then} -> {now})'
        return (f'{stage} was made from the {name} stage\'s result, which {state} in '
                f'{self.stage_dir(name)}')
    return None

  def clear_done(self, stage: str) -> None:
    try:
      os.remove(self.done_path(stage))
    except FileNotFoundError:
      pass


def raw_shards_removed(run: Run) -> str | None:
  """What to do, when `python -m wm clean --records` removed the run's raw shards (its record
  named, and how to write them again); None while they are kept."""
  cleaned = os.path.join(run.stage_dir('shard'), CLEANED)
  if not os.path.exists(cleaned):
    return None
  return (f'the raw shards of {run.stage_dir("shard")} were removed once encoded ({cleaned}: '
          f'python -m wm clean --records): write them again from the rollouts (remove '
          f'{run.done_path("shard")}, then python scripts/shard_rollouts.py '
          f'--run_dir={run.root}), or start another run dir')
