"""`python -m wm clean RUN [RUN ...] --rollouts`: frees the disk a run no longer needs.

    python -m wm clean runs/doom_small --rollouts --dry_run   # what would go, and how much
    python -m wm clean runs/doom_small --rollouts             # remove it

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
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Say what would be removed, remove nothing.')


RESHARD = ('run the shard stage again first (python scripts/shard_rollouts.py --run_dir={}: it '
           'writes what is missing)')


def sharded_rollouts(run: runs.Run) -> set[int]:
  """The rollout indices in RUN/records' complete shards: a DataError when the shard stage has
  not finished or a shard its manifests list is missing or of another size than recorded."""
  if not run.is_done('shard'):
    raise DataError(f'{run.root}: the shard stage has not finished ({run.done_path("shard")} is '
                    'missing), so the rollouts are the only copy of the data: run it first')
  members = set()
  for split in runs.SPLITS:
    path = os.path.join(run.split_dir('shard', split), runs.MANIFEST)
    if not os.path.exists(path):
      continue
    for entry in fileio.read_json(path)['shards']:
      shard = os.path.join(run.split_dir('shard', split), entry['file'])
      size = os.path.getsize(shard) if os.path.exists(shard) else None
      if size != entry['bytes']:
        state = 'is missing' if size is None else f'has {size} bytes'
        raise DataError(f'{shard} {state} where {path} records {entry["bytes"]}: the shards '
                        f'are not whole, so the rollouts are kept; {RESHARD.format(run.root)}')
      members.update(entry['rollouts'])
  return members


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
  record = os.path.join(folder, rollouts.CLEANED)
  try:
    earlier = fileio.read_json(record)  # an earlier clean's, when rollouts were put back since
  except (OSError, ValueError):
    earlier = None
  earlier = earlier if isinstance(earlier, dict) else {}
  # The record first: a clean killed halfway leaves it, and the stages then refuse to reshard
  # what is left rather than shard a part of the rollouts.
  fileio.write_json(record, {'removed': earlier.get('removed', 0) + len(paths),
                             'bytes': earlier.get('bytes', 0) + size, 'at': time.strftime('%F %T'),
                             'by': 'python -m wm clean --rollouts'})
  for path in paths:
    os.remove(path)
  return len(paths), size


@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  paths = argv[1:]
  if not paths or not _ROLLOUTS.value:
    raise UserError('usage: python -m wm clean RUN [RUN ...] --rollouts [--dry_run] (what to '
                    'remove: --rollouts, the rollout files once sharded)')
  found = [status.open_run(path) for path in paths]
  planned = [clean_rollouts(run, dry_run=True) for run in found]  # all checked before any change
  for run, (count, size) in zip(found, planned):
    if not _DRY_RUN.value:
      with pipeline.run_lock(run.root):
        count, size = clean_rollouts(run)
    verb = 'would remove' if _DRY_RUN.value else 'removed'
    print(f'{run.root}: {verb} {count} rollouts ({size / 2**20:.1f} MB); the shards in '
          f'{run.stage_dir("shard")} hold them', flush=True)


def parse(argv: list[str]) -> list[str]:
  """absl's flags_parser: flags anywhere among the run dirs; a bad flag is one message, exit 2."""
  return status.parse(argv)
