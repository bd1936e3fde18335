"""What a rerun with another config means for each finished stage: keep, redo, or refuse.

A finished stage ran with the config in RUN/<stage>/snapshot/config.json. A rerun compares the
fields the stage owns (wm/infra/runs.py STAGE_CONFIG; fields that only change speed are left
out) with the config it is given now:
    none differ                          keep the stage (it is skipped)
    only top-ups, raised (TOP_UPS)       redo it: the stage continues from where it stopped
    anything else                        refuse, naming the fields: the stage's outputs were made
                                         with the old values and nothing can turn them into the
                                         new ones in place
A stage's upstream fields are checked where they belong: a changed env.name refuses collect, the
first stage that owns it, before anything later runs.
"""

from __future__ import annotations

import os
from typing import Any

from wm import config as config_lib
from wm.errors import ConfigError
from wm.infra import fileio, runs


def changed_fields(run: runs.Run, stage: str, config: dict[str, Any]) -> dict[str, tuple]:
  """{field: (value the stage ran with, value now)} over the fields `stage` owns; {} when the
  stage has no snapshot to compare with (run with --nostore_snapshot)."""
  path = os.path.join(run.stage_dir(stage), 'snapshot', 'config.json')
  try:
    before = fileio.read_json(path)
  except (OSError, ValueError):
    return {}
  try:
    before = with_defaults(before)
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}') from None
  owned = runs.STAGE_CONFIG[stage]
  return field_changes(runs.flat_fields(before, owned), runs.flat_fields(config, owned))


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
  """A stored config with the fields it lacks at their defaults and old names renamed: a
  config.json written before a field existed ran as its default does (a new field's default
  keeps the old behaviour)."""
  return config_lib.to_dict(config_lib.from_dict(config))


def field_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple]:
  """{field: (old value, new value)} where two flat field dicts (runs.flat_fields) differ."""
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)}


def describe(changes: dict[str, tuple]) -> str:
  return ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in changes.items())


def decide(run: runs.Run, stage: str, config: dict[str, Any]) -> tuple[str, str]:
  """('keep' | 'redo' | 'refuse', why) for the finished `stage` given `config`."""
  changes = changed_fields(run, stage, config)
  if not changes:
    return 'keep', ''
  listed = describe(changes)
  top_ups = all(k in runs.TOP_UPS and isinstance(old, int) and isinstance(new, int)
                and new >= old for k, (old, new) in changes.items())
  if top_ups:
    return 'redo', f'{listed} (a top-up: the stage continues from where it stopped)'
  return 'refuse', (
      f'{stage} finished with other settings: {listed}. Its outputs were made with the old '
      f'values: run the new config in another --run_dir (sweeps share what they can: python -m '
      f'wm sweep), or move {run.stage_dir(stage)} and the later stages\' folders away to redo '
      'them here')
