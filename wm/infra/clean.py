"""`python -m wm clean RUN [RUN ...] --rollouts --records`: frees the disk a run no longer needs.

    python -m wm clean runs/doom_small --rollouts --dry_run   # what would go, and how much
    python -m wm clean runs/doom_small --rollouts             # remove it
    python -m wm clean runs/doom_small --records              # the raw shards, once encoded

A run's rollouts (RUN/rollouts/rollout-*.npz) and its shards (RUN/records) hold the same frames
twice (the Doom `small` preset: 2.4 GB each). Once every rollout is in a complete shard, every
later stage reads the shards, so `--rollouts` removes the rollout files (a linked one: the link
only) and leaves RUN/rollouts/CLEANED.json saying what went and when. The collect and shard
stages keep their DONE: rerunning the pipeline skips them as before, and nothing downstream
changes. What would need the rollouts again refuses, naming that file: collecting more (a
top-up of collect.num_rollouts), sharding again (other records.* fields), a round of iterative
training from this run, benchmark_seq.py's --lengths_from.

A run is cleaned only when its shard stage finished, every rollout on disk is a member of a
shard listed in RUN/records/<split>/manifest.json that exists at its recorded size, and no
pipeline runs in it (its lock is held while removing); otherwise nothing is removed and the
reason is said (exit 2).

The raw shards (RUN/records/<split>/raw.tfrecord-*) are read by V's training and by the encode
stage only: once V is trained and every shard encoded (RUN/encoded complete, its files at their
recorded sizes), `--records` removes them (a hard link made by a round of iterative training:
that name only) and leaves RUN/records/CLEANED.json; their manifests stay, so the encoded
latents still name what they were made from. What would read them again refuses, naming that
file: training V further, encoding again, benchmark_vae.py. Rerunning the shard stage (remove
RUN/records/DONE first) writes them again from RUN/rollouts when those are still there, and
removes CLEANED.json; a round of iterative training from this run does the same in its own run
dir.
"""

from __future__ import annotations

import os
import time

from absl import flags

from wm import rollouts
from wm.errors import DataError, UserError
from wm.infra import cli, fileio, pipeline, runs, status

_ROLLOUTS = flags.DEFINE_bool('rollouts', False, 'Remove the rollout files of runs whose shards '
                              'hold every one of them.')
_RECORDS = flags.DEFINE_bool('records', False, 'Remove the raw shards of runs whose V is trained '
                             'and whose encode stage holds every shard\'s latents.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Say what would be removed, remove nothing.')


RESHARD = ('run the shard stage again first (python scripts/shard_rollouts.py --run_dir={}: it '
           'writes what is missing)')


def sharded_rollouts(run: runs.Run) -> set[int]:
  """The rollout indices in RUN/records' complete shards (once those were removed by
  `--records`, in RUN/encoded's complete files): a DataError when the shard stage has not
  finished or a shard its manifests list is missing or of another size than recorded."""
  if not run.is_done('shard'):
    raise DataError(f'{run.root}: the shard stage has not finished ({run.done_path("shard")} is '
                    'missing), so the rollouts are the only copy of the data: run it first')
  members = set()
  if os.path.exists(os.path.join(run.stage_dir('shard'), runs.CLEANED)):
    for split in encoded_splits(run):  # the raw shards went once encoded: the latents hold them
      path = os.path.join(run.split_dir('encode', split), runs.MANIFEST)
      members.update(i for entry in fileio.read_json(path)['shards'] for i in entry['rollouts'])
    return members
  for split in runs.SPLITS:
    path = os.path.join(run.split_dir('shard', split), runs.MANIFEST)
    if not os.path.exists(path):
      continue
    for entry in whole_files(path, 'the shards are not whole, so the rollouts are kept; '
                             f'{RESHARD.format(run.root)}'):
      members.update(entry['rollouts'])
  return members


def whole_files(manifest: str, consequence: str) -> list[dict]:
  """The entries of a split's `manifest`, each file checked at its recorded size: a DataError
  naming the first that is missing or of another size, and the `consequence`."""
  entries = fileio.read_json(manifest)['shards']
  for entry in entries:
    path = os.path.join(os.path.dirname(manifest), entry['file'])
    size = os.path.getsize(path) if os.path.exists(path) else None
    if size != entry['bytes']:
      state = 'is missing' if size is None else f'has {size} bytes'
      raise DataError(f'{path} {state} where {manifest} records {entry["bytes"]}: {consequence}')
  return entries


def clean_rollouts(run: runs.Run, dry_run: bool = False) -> tuple[int, int]:
  """Removes RUN/rollouts' rollouts once sharded (see the module docstring); returns how many
  files and bytes (a link's target not counted) went, or would go with `dry_run`."""
  folder = run.stage_dir('collect')
  on_disk = rollouts.list_indices(folder)
  unsharded = sorted(set(on_disk) - sharded_rollouts(run))
  if unsharded:
    raise DataError(f'{len(unsharded)} rollouts in {folder} are in no shard of '
                    f'{run.stage_dir("shard")} (e.g. {rollouts.path_for(folder, unsharded[0])}): '
                    f'{RESHARD.format(run.root)}')
  paths = [rollouts.path_for(folder, i) for i in on_disk]
  size = sum(os.path.getsize(p) for p in paths if not os.path.islink(p))
  if dry_run or not paths:
    return len(paths), size
  # A clean killed halfway leaves the record, and the stages then refuse to reshard what is left
  # rather than shard a part of the rollouts.
  return remove_recorded(folder, paths, size, '--rollouts')


def remove_recorded(folder: str, paths: list[str], size: int, flag: str) -> tuple[int, int]:
  """Removes `paths` after adding them to folder/CLEANED.json (an earlier clean's counts kept,
  when the files were put back since): the record first, so what would read them names it."""
  record = os.path.join(folder, runs.CLEANED)
  try:
    earlier = fileio.read_json(record)
  except (OSError, ValueError):
    earlier = None
  earlier = earlier if isinstance(earlier, dict) else {}
  fileio.write_json(record, {'removed': earlier.get('removed', 0) + len(paths),
                             'bytes': earlier.get('bytes', 0) + size, 'at': time.strftime('%F %T'),
                             'by': f'python -m wm clean {flag}'})
  for path in paths:
    os.remove(path)
  return len(paths), size


def encoded_splits(run: runs.Run) -> list[str]:
  """The splits whose raw shards RUN/encoded holds as latents: a DataError when V or the encode
  stage has not finished, is stale, or an encoded file its manifests list is missing or of
  another size than recorded (then the raw shards are the only way to make it again)."""
  for stage, what in (('vae', 'V is not trained'), ('encode', 'the shards are not encoded')):
    if not run.is_done(stage):
      raise DataError(f'{run.root}: the {stage} stage has not finished ({run.done_path(stage)} '
                      f'is missing): {what}, and the raw shards are what it reads: run it first')
    reason = run.stale_reason(stage)
    if reason:
      raise DataError(f'{run.root}: the {stage} stage is stale ({reason}), and rerunning it '
                      'reads the raw shards: rerun it first')
  splits = []
  for split in runs.SPLITS:
    if not os.path.exists(os.path.join(run.split_dir('shard', split), runs.MANIFEST)):
      continue
    path = os.path.join(run.split_dir('encode', split), runs.MANIFEST)
    if not os.path.exists(path):
      raise DataError(f'{path} is missing though {run.split_dir("shard", split)} has shards: '
                      f'rerun the encode stage (python scripts/encode_rollouts.py '
                      f'--run_dir={run.root})')
    whole_files(path, 'the latents are not whole, so the raw shards are kept; rerun the encode '
                'stage')
    splits.append(split)
  return splits


def clean_records(run: runs.Run, dry_run: bool = False) -> tuple[int, int]:
  """Removes RUN/records' raw shards once encoded (see the module docstring); returns how many
  files and bytes (a hard link's counted only when it is the last name of its file) went, or
  would go with `dry_run`."""
  paths = []
  for split in encoded_splits(run):
    folder = run.split_dir('shard', split)
    manifest = fileio.read_json(os.path.join(folder, runs.MANIFEST))
    paths += [p for p in (os.path.join(folder, s['file']) for s in manifest['shards'])
              if os.path.exists(p)]
  size = sum(os.stat(p).st_size for p in paths if os.stat(p).st_nlink == 1)
  if dry_run or not paths:
    return len(paths), size
  return remove_recorded(run.stage_dir('shard'), paths, size, '--records')


@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  paths = argv[1:]
  if not paths or not (_ROLLOUTS.value or _RECORDS.value):
    raise UserError('usage: python -m wm clean RUN [RUN ...] [--rollouts] [--records] '
                    '[--dry_run] (what to remove: --rollouts, the rollout files once sharded; '
                    '--records, the raw shards once V is trained and they are encoded)')
  found = [status.open_run(path) for path in paths]
  kinds = [(clean_rollouts, 'rollouts')] * _ROLLOUTS.value + [(clean_records, 'raw shards')
                                                              ] * _RECORDS.value
  # Every run and kind checked before any change.
  planned = [[clean(run, dry_run=True) for clean, _ in kinds] for run in found]
  for run, counts in zip(found, planned):
    for (clean, what), (count, size) in zip(kinds, counts):
      # What holds the frames: the shards, or the latents once the shards went (--records)
      shards_gone = what != 'rollouts' or os.path.exists(
          os.path.join(run.stage_dir('shard'), runs.CLEANED))
      holder = f'the latents in {run.stage_dir("encode")}' if shards_gone else (
          f'the shards in {run.stage_dir("shard")}')
      if not _DRY_RUN.value:
        with pipeline.run_lock(run.root):
          count, size = clean(run)
      verb = 'would remove' if _DRY_RUN.value else 'removed'
      print(f'{run.root}: {verb} {count} {what} ({size / 2**20:.1f} MB); {holder} hold them',
            flush=True)


def parse(argv: list[str]) -> list[str]:
  """absl's flags_parser: flags anywhere among the run dirs; a bad flag is one message, exit 2."""
  return status.parse(argv)
