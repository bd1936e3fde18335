"""Stage shard: pack rollout .npz files into GZIP TFRecord shards with a train/validation split.

The plan is a pure function of the rollouts on disk and the config: each rollout goes to the
validation split when a hash of (seed, index) falls under records.valid_fraction (so a rollout
never changes split when the folder is topped up), and each split is cut, in index order, into
consecutive shards, a new one starting once the last holds records.shard_size_mb (so rollouts
added with higher indices leave every full shard's rollouts as they were). Every shard is written
atomically, then a small metadata file `.meta/<shard>.json` (rollouts, frames, bytes, sha256)
records it as complete; a rerun skips complete shards. A shard whose rollouts a complete shard of
records.reuse_from's run holds (`python -m wm iterate`: the round before) is a hard link to that
one, not written again. Once every shard of a split is complete, `manifest.json` is written and
shards of an older plan are removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from typing import Iterable

import numpy as np
from absl import logging

from wm import rollouts
from wm.config import Config
from wm.infra import cli, fileio, runs, workers
from wm.errors import ConfigError, DataError

PREFIX = 'raw'
MANIFEST = runs.MANIFEST
META = '.meta'
FORMAT = 'raw-rollouts-v1'
_SHARD = re.compile(r'^(raw|encoded)\.tfrecord-\d{5}-of-\d{5}$')


def split_of(seed: int, index: int, valid_fraction: float) -> str:
  u = np.random.SeedSequence([seed, index, 0x5EED]).generate_state(1)[0] / 2.0**32
  return 'valid' if u < valid_fraction else 'train'


def plan(config: Config, folder: str) -> dict[str, list[list[int]]]:
  """{split: [[rollout indices of shard 0], ...]} for the rollouts in `folder`."""
  indices = rollouts.list_indices(folder)
  if not indices:
    raise DataError(f'no rollouts in {folder}; run scripts/collect_rollouts.py first')
  fraction = config.records.valid_fraction
  splits = {s: [] for s in runs.SPLITS}
  for index in indices:
    splits[split_of(config.seed, index, fraction)].append(index)
  if fraction > 0 and not splits['valid'] and len(indices) > 1:
    # Tiny data sets: the rollout with the smallest hash goes to validation.
    first = min(indices, key=lambda i: np.random.SeedSequence([config.seed, i, 0x5EED])
                .generate_state(1)[0])
    splits['train'].remove(first)
    splits['valid'].append(first)
  target = config.records.shard_size_mb * 2**20
  sizes = {i: os.path.getsize(rollouts.path_for(folder, i)) for i in indices}
  return {split: _cut(members, sizes, target) for split, members in splits.items() if members}


def _cut(members: list[int], sizes: dict[int, int], target: float) -> list[list[int]]:
  """Consecutive groups in order, a new one started once the last holds `target` bytes: what
  comes after a full group never changes it."""
  groups, held = [[]], 0
  for index in members:
    if held >= target:
      groups.append([])
      held = 0
    groups[-1].append(index)
    held += sizes[index]
  return groups


def _meta_path(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, META, name + '.json')


def shard_complete(out_dir: str, name: str, members: list[int], **expected) -> bool:
  """True when `name` and its metadata exist, match `members` and every `expected` key."""
  meta = _meta_path(out_dir, name)
  if not (os.path.exists(meta) and os.path.exists(os.path.join(out_dir, name))):
    return False
  info = fileio.read_json(meta)
  if any(info.get(key) != value for key, value in expected.items()):
    return False
  return info.get('rollouts') == members and info.get('bytes') == os.path.getsize(
      os.path.join(out_dir, name))


def write_meta(out_dir: str, name: str, info: dict) -> None:
  """Records shard `name` as complete (call after the shard itself is in place)."""
  fileio.write_json(_meta_path(out_dir, name), info)


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      digest.update(block)
  return digest.hexdigest()


def write_shard(job: tuple[str, str, list[int], str, int]) -> dict:
  """Writes one shard from rollout files; returns its metadata. `job` = (in, out, members, name,
  zlib level)."""
  from wm import records  # TensorFlow is imported only by the processes that write
  in_dir, out_dir, members, name, compress_level = job
  path = os.path.join(out_dir, name)
  frames = 0

  def examples() -> Iterable[bytes]:
    nonlocal frames
    for index in members:
      rollout = rollouts.load(rollouts.path_for(in_dir, index))
      frames += len(rollout['frames'])
      yield records.raw_example(rollout, index)

  with fileio.atomic_path(path) as tmp:
    records.write(tmp, examples(), compress_level)
  info = {'file': name, 'rollouts': members, 'num_rollouts': len(members), 'frames': frames,
          'bytes': os.path.getsize(path), 'sha256': sha256(path)}
  fileio.write_json(_meta_path(out_dir, name), info)
  return info


def complete_shards(split_dir: str) -> dict[tuple[int, ...], dict]:
  """{rollouts: metadata} of the complete raw shards in `split_dir` (none if it is absent)."""
  found = {}
  meta_dir = os.path.join(split_dir, META)
  for entry in sorted(os.listdir(meta_dir)) if os.path.isdir(meta_dir) else []:
    name = entry.removesuffix('.json')
    if not (_SHARD.match(name) and name.startswith(PREFIX + '.')):
      continue
    try:
      info = fileio.read_json(os.path.join(meta_dir, entry))
    except (OSError, ValueError):
      continue  # unreadable: not a shard to reuse
    members = info.get('rollouts') if isinstance(info, dict) else None
    if isinstance(members, list) and shard_complete(split_dir, name, members):
      found[tuple(members)] = info
  return found


def link_shard(source_dir: str, info: dict, out_dir: str, name: str) -> dict:
  """Shard `name` in out_dir as a hard link to the complete shard `info` of source_dir (a copy
  where they are on different filesystems), and its metadata; returns the metadata."""
  with fileio.atomic_path(os.path.join(out_dir, name)) as tmp:
    try:
      os.link(os.path.join(source_dir, info['file']), tmp)
    except OSError:
      shutil.copyfile(os.path.join(source_dir, info['file']), tmp)
  info = dict(info, file=name)
  write_meta(out_dir, name, info)
  return info


def shard(config: Config, in_dir: str, out_root: str, parallelism: int = 1, task_index: int = 0,
          num_tasks: int = 1, log=print) -> dict[str, dict]:
  """Writes (or links from records.reuse_from) this task's missing shards; writes manifests for
  splits that are complete."""
  the_plan = plan(config, in_dir)
  donor_root = None
  if config.records.reuse_from:
    if not os.path.isdir(config.records.reuse_from):
      raise ConfigError(f'records.reuse_from={config.records.reuse_from!r} is not a folder: '
                        'give the run dir whose shards to link, or leave it empty')
    donor_root = runs.Run(config.records.reuse_from).stage_dir('shard')
  jobs, position, linked = [], 0, 0
  for split, groups in the_plan.items():
    out_dir = os.path.join(out_root, split)
    os.makedirs(os.path.join(out_dir, META), exist_ok=True)
    fileio.remove_stale_tmp_files(out_dir)
    donor_dir = os.path.join(donor_root, split) if donor_root else None
    donors = complete_shards(donor_dir) if donor_dir else {}
    for k, members in enumerate(groups):
      name = rollouts_shard_name(k, len(groups))
      mine = position % num_tasks == task_index
      position += 1
      if not mine or shard_complete(out_dir, name, members):
        continue
      if tuple(members) in donors:
        link_shard(donor_dir, donors[tuple(members)], out_dir, name)
        linked += 1
      else:
        jobs.append((in_dir, out_dir, members, name, config.records.compress_level))
  reused = f', {linked} linked from {donor_root}' if linked else ''
  log(f'{sum(map(len, the_plan.values()))} shards planned, {len(jobs)} to write here{reused}')
  if parallelism > 1 and len(jobs) > 1:
    # A shard of ~200 MB takes about a minute; an hour means a hung filesystem.
    with workers.WorkerPool(min(parallelism, len(jobs)), write_shard, name='shard',
                            task_timeout=3600, describe=lambda job: f'shard {job[3]}') as pool:
      for info in pool.imap_unordered(jobs):
        log(f'wrote {info["file"]}: {info["num_rollouts"]} rollouts, '
            f'{info["bytes"] / 2**20:.1f} MB')
  else:
    for job in jobs:
      info = write_shard(job)
      log(f'wrote {info["file"]}: {info["num_rollouts"]} rollouts, {info["bytes"] / 2**20:.1f} MB')
  return {split: finish_split(os.path.join(out_root, split), groups)
          for split, groups in the_plan.items()}


def rollouts_shard_name(k: int, n: int, prefix: str = PREFIX) -> str:
  return f'{prefix}.tfrecord-{k:05d}-of-{n:05d}'


def finish_split(out_dir: str, groups: list[list[int]], prefix: str = PREFIX,
                 fmt: str = FORMAT, expected: dict | None = None,
                 **extra) -> dict | None:
  """Writes manifest.json when every planned shard is complete; None while some are missing.

  `prefix` names the shards (raw, encoded), `expected` are metadata values every shard must
  have (see shard_complete), `extra` are added to the manifest.
  """
  names = [rollouts_shard_name(k, len(groups), prefix) for k in range(len(groups))]
  expected = expected or {}
  if not all(shard_complete(out_dir, n, g, **expected) for n, g in zip(names, groups)):
    return None
  shards = [fileio.read_json(_meta_path(out_dir, n)) for n in names]
  manifest = {'format': fmt, **extra, 'num_shards': len(shards),
              'num_rollouts': sum(s['num_rollouts'] for s in shards),
              'num_frames': sum(s['frames'] for s in shards),
              'bytes': sum(s['bytes'] for s in shards), 'shards': shards}
  fileio.write_json(os.path.join(out_dir, MANIFEST), manifest)
  for name in os.listdir(out_dir):  # shards of an older plan (before a top-up)
    if _SHARD.match(name) and name.startswith(prefix + '.') and name not in names:
      os.remove(os.path.join(out_dir, name))
      if os.path.exists(_meta_path(out_dir, name)):
        os.remove(_meta_path(out_dir, name))
  return manifest


def read_manifest(split_dir: str) -> dict:
  """The manifest of a finished split, or a DataError saying which stage to run."""
  return fileio.read_json_checked(
      os.path.join(split_dir, MANIFEST), f'the shards in {split_dir} are missing or incomplete',
      'run (or rerun) the stage that writes them')


def shard_paths(split_dir: str) -> list[str]:
  manifest = read_manifest(split_dir)
  paths = [os.path.join(split_dir, s['file']) for s in manifest['shards']]
  missing = [p for p in paths if not os.path.exists(p)]
  run = runs.Run(os.path.dirname(os.path.dirname(split_dir)))
  raw = os.path.abspath(os.path.dirname(split_dir)) == run.stage_dir('shard')  # not RUN/encoded
  removed = missing and raw and runs.raw_shards_removed(run)
  if removed:
    raise DataError(f'{len(missing)} shards of {split_dir} are gone, and this reads them: '
                    f'{removed}; the latents and every later stage are as they were')
  if missing:
    raise DataError(f'{len(missing)} shards listed in {split_dir}/{MANIFEST} are missing, '
                    f'e.g. {missing[0]}; rerun the stage that writes them')
  return paths


def run(stage: cli.Stage, parallelism: int = 1, task_index: int = 0, num_tasks: int = 1,
        input_dir: str | None = None) -> None:
  """The stage: this task's missing shards, then DONE once every split's manifest exists."""
  in_dir = input_dir or stage.run.stage_dir('collect')
  manifests = shard(stage.config, in_dir, stage.dir, parallelism, task_index, num_tasks,
                    log=logging.info)
  for split, manifest in manifests.items():
    if manifest is None:
      logging.info('%s: waiting for shards written by other tasks', split)
    else:
      logging.info('%s: %d shards, %d rollouts, %d frames, %.1f MB', split,
                   manifest['num_shards'], manifest['num_rollouts'], manifest['num_frames'],
                   manifest['bytes'] / 2**20)
  if all(m is not None for m in manifests.values()):
    cleaned = os.path.join(stage.dir, runs.CLEANED)
    if os.path.exists(cleaned):  # every shard is back: what `clean --records` removed
      os.remove(cleaned)
    stage.run.mark_done('shard', **{s: m['num_rollouts'] for s, m in manifests.items()})
