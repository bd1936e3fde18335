"""Sweeps: a grid of runs under one root, sharing every stage whose inputs are the same.

    python -m wm.infra.sweep --root=runs/temps --config=configs/doom.py:small \\
        --grid controller.dream_temperature=0.5,1.0,1.15,1.3 --grid seed=0,1,2 \\
        [--config.a.b=v] [--stages=collect,shard] [--parallelism=N] [--dry_run]
    python -m wm.infra.sweep ... --slurm [--partition=cpu --gpu_partition=gpu ...] [--dry_run]
    python -m wm.infra.sweep --root=runs/temps --summary        # redo the summary only

The grid's cartesian product gives the runs, each a run dir ROOT/<field=value,...> with its
overrides (after the --config.a.b=v ones every run gets). For each stage in pipeline order, runs
whose runs.config_key is equal (the same values of every field the stage and the stages before
it read) share one folder: the first run of the group owns it, the others get a relative symlink
RUN/<stage dir> -> ../<owner>/<stage dir>. The temperature sweep above collects, shards, trains
V, encodes and trains M 3 times (once per seed) and trains 12 controllers.

ROOT/sweep.json records the runs, their overrides and resolved configs, and per stage the key and
the owner. A rerun of the same sweep reuses what exists (finished stages are skipped); new grid
values join the groups that exist; a run whose key changed for a stage it shares (or would now
share) is refused, naming the fields, before anything is written.

Locally the runs go one after the other through wm.infra.pipeline.run_stages, an owner before
the runs that share its stages (a run whose shared stage is not done when its turn comes, because
its owner failed, is not run). With --slurm each run is a chain of wm.infra.submit's jobs where a
shared stage is not submitted again: the run's next job waits (afterok) for the owner's job of
that stage. The summary (wm/infra/sweep_summary.py) ends both, in ROOT/summary.{md,png} and
ROOT/tb/. Grid values cannot contain commas.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import re
import shlex
import sys
import time
from typing import Any

from absl import app, flags

from wm import config as config_lib
from wm.errors import UserError
from wm.infra import (changes, cli, fileio, pipeline, quiet, runs, slurm, submit,
                      sweep_summary)

_ROOT = flags.DEFINE_string('root', None, 'Folder of the sweep: one run dir per grid point, '
                            'sweep.json, summary.md, summary.png, tb/.')
_GRID = flags.DEFINE_multi_string('grid', [], 'FIELD=V1,V2,... (repeatable): the runs are the '
                                  'cartesian product of the values, e.g. seed=0,1,2.')
_SLURM = flags.DEFINE_bool('slurm', False, 'Submit each run as a SLURM chain (wm.infra.submit '
                           'options apply) instead of running them here.')
_SUMMARY = flags.DEFINE_bool('summary', False, 'Only write the summary of the runs in --root.')

RECORD = 'sweep.json'
LOCK = '.sweep'  # ROOT/.sweep.claim: held while a sweep plans, runs or submits in ROOT
KEY_FLAGS = ('root', 'grid', 'config', 'stages', 'parallelism', 'slurm', 'summary', 'dry_run')
EXIT_BLOCKED = 1  # a run not run: a stage it shares is not done (its owner failed)


@dataclasses.dataclass
class SweepRun:
  name: str  # folder under the root
  overrides: dict[str, str]  # the grid's values for this run
  config: dict[str, Any]  # resolved (base overrides and the grid's applied)
  keys: dict[str, str] = dataclasses.field(default_factory=dict)  # stage -> runs.config_key
  owners: dict[str, str] = dataclasses.field(default_factory=dict)  # stage -> owning run's name


# ------------------------------------------------------------------------ the grid

def parse_grid(items: list[str]) -> dict[str, list[str]]:
  """{field: values} from FIELD=V1,V2 items; a malformed or repeated field is refused."""
  grid = {}
  for item in items:
    field, eq, values = item.partition('=')
    values = [v.strip() for v in values.split(',')]
    if not eq or not field or not all(values):
      raise UserError(f'--grid={item!r}: expected FIELD=V1,V2,... e.g. --grid seed=0,1,2')
    if field in grid:
      raise UserError(f'--grid: {field} is given twice; list all its values in one --grid')
    if len(set(values)) != len(values):
      raise UserError(f'--grid={item!r}: a value is repeated')
    grid[field] = values
  if not grid:
    raise UserError('a sweep needs at least one --grid FIELD=V1,V2,...')
  return grid


def run_name(overrides: dict[str, str]) -> str:
  """'controller.dream_temperature=1.15,seed=0', with what a path cannot hold replaced."""
  name = re.sub(r'[^A-Za-z0-9._=,+-]', '_', ','.join(f'{k}={v}' for k, v in overrides.items()))
  return name if not name.startswith('.') else '_' + name[1:]


def expand(spec: str, base: dict[str, str], grid: dict[str, list[str]]) -> list[SweepRun]:
  """One run per point of the grid, its config resolved and validated (a bad value is refused
  naming the field before anything runs)."""
  overlap = sorted(set(base) & set(grid))
  if overlap:
    raise UserError(f'{overlap} given both as --config.FIELD and as --grid: pick one')
  found = []
  for values in itertools.product(*grid.values()):
    overrides = dict(zip(grid, values))
    config = config_lib.apply_overrides(config_lib.load(spec), {**base, **overrides})
    found.append(SweepRun(run_name(overrides), overrides,
                          config_lib.to_dict(config_lib.validate(config))))
  names = collections.Counter(r.name for r in found)
  clashes = [n for n, count in names.items() if count > 1]
  if clashes:
    raise UserError(f'grid values that differ only in characters a folder name cannot hold give '
                    f'the same run dir: {clashes}')
  return found


# ------------------------------------------------------------------------ sharing

def share(sweep_runs: list[SweepRun], record: dict | None = None) -> None:
  """Sets each run's keys and owners: per stage, runs with equal keys share one owner, the
  owner `record` (an earlier sweep.json) names where its key is unchanged, else the first."""
  current = {r.name: r for r in sweep_runs}
  for run in sweep_runs:
    run.keys = {stage: runs.config_key(run.config, stage) for stage in runs.STAGE_DIRS}
  owners = {}
  for old in (record or {}).get('runs', []):
    for stage, entry in old['stages'].items():
      now = current.get(old['name'])
      if entry['owner'] == old['name'] and (now is None or now.keys[stage] == entry['key']):
        owners[(stage, entry['key'])] = old['name']
  for run in sweep_runs:
    run.owners = {stage: owners.setdefault((stage, key), run.name)
                  for stage, key in run.keys.items()}


def refuse_changes(sweep_runs: list[SweepRun], record: dict | None) -> None:
  """A run of `record` whose key changed for a stage it shared, or would share now, is refused
  with the fields that changed: its folder holds results made with the old values."""
  before = {r['name']: r for r in (record or {}).get('runs', [])}
  sizes_before = collections.Counter((s, e['key']) for r in before.values()
                                     for s, e in r['stages'].items())
  kept = [r for name, r in before.items() if name not in {s.name for s in sweep_runs}]
  sizes_now = collections.Counter([(s, k) for r in sweep_runs for s, k in r.keys.items()] + [
      (s, e['key']) for r in kept for s, e in r['stages'].items()])
  for run in (r for r in sweep_runs if r.name in before):
    then = before[run.name]
    for stage, key in run.keys.items():
      old = then['stages'][stage]['key']
      if old == key:
        continue
      if sizes_before[(stage, old)] > 1 or sizes_now[(stage, key)] > 1:
        raise UserError(changed_message(run, then, stage))
      break  # a stage of its own: the pipeline redoes or refuses it (wm/infra/changes.py)


def changed_message(run: SweepRun, then: dict, stage: str) -> str:
  fields = changes.describe(changes.field_changes(runs.stage_fields(then['config'], stage),
                                                  runs.stage_fields(run.config, stage)))
  return (f'run {run.name}: the {stage} stage is shared with other runs of the sweep, and its '
          f'settings changed since {RECORD} recorded them: {fields}. The shared outputs were made '
          'with the old values: sweep the new settings into another --root, or move the old '
          f'run dirs (and {RECORD}) away')


def link_problems(root: str, sweep_runs: list[SweepRun]) -> list[str]:
  """What is in the way of the planned folders: an owner's folder that is a link, a sharing
  run's folder that is a real one or a link elsewhere."""
  problems = []
  for run in sweep_runs:
    for stage, owner in run.owners.items():
      path = os.path.join(root, run.name, runs.STAGE_DIRS[stage])
      target = link_target(run.name, owner, stage)
      if owner == run.name and os.path.islink(path):
        problems.append(f'{path} is a link ({os.readlink(path)}) but {run.name} owns {stage}')
      elif owner != run.name and os.path.lexists(path) and (
          not os.path.islink(path) or os.readlink(path) != target):
        found = f'a link to {os.readlink(path)}' if os.path.islink(path) else 'a folder'
        problems.append(f'{path} is {found}, but {run.name} shares {stage} from {owner}')
  return problems


def link_target(name: str, owner: str, stage: str) -> str:
  return os.path.join('..', owner, runs.STAGE_DIRS[stage]) if owner != name else ''


def apply(root: str, sweep_runs: list[SweepRun], record: dict, summary: dict) -> None:
  """Creates the run dirs, their RUN/config.json and links, and writes ROOT/sweep.json."""
  for run in sweep_runs:
    folder = os.path.join(root, run.name)
    os.makedirs(folder, exist_ok=True)
    if not os.path.lexists(os.path.join(folder, 'config.json')):
      config = config_lib.from_dict(run.config)
      fileio.write_text(os.path.join(folder, 'config.json'), config_lib.to_json(config) + '\n')
    for stage, owner in run.owners.items():
      path = os.path.join(folder, runs.STAGE_DIRS[stage])
      if owner != run.name and not os.path.lexists(path):
        os.symlink(link_target(run.name, owner, stage), path)  # dangling until the owner runs
  names = {r.name for r in sweep_runs}
  entries = [r for r in (record or {}).get('runs', []) if r['name'] not in names]
  entries += [{'name': r.name, 'overrides': r.overrides,
               'stages': {s: {'key': r.keys[s], 'owner': r.owners[s]} for s in r.keys},
               'config': r.config} for r in sweep_runs]
  fileio.write_json(os.path.join(root, RECORD), {**summary, 'updated_at': time.strftime('%F %T'),
                                                 'runs': entries})


def describe_sharing(sweep_runs: list[SweepRun]) -> str:
  lines = [f'== {len(sweep_runs)} runs; per stage, the runs that compute it (the others share '
           'their folder):']
  for stage in runs.STAGE_DIRS:
    owners = list(dict.fromkeys(r.owners[stage] for r in sweep_runs))
    which = 'every run' if len(owners) == len(sweep_runs) else ', '.join(owners)
    lines.append(f'  {stage:11s} {len(owners):3d}x  {which}')
  return '\n'.join(lines)


# ------------------------------------------------------------------------ running

def run_flags(run_dir: str, spec: str, overrides: dict[str, str]) -> list[str]:
  return [f'--run_dir={run_dir}', f'--config={spec}',
          *(f'--config.{k}={v}' for k, v in overrides.items())]


def waiting_for(root: str, run: SweepRun, stages: list[pipeline.StageCommand],
                submitted: dict | None = None) -> list[str]:
  """The stages `run` shares (of `stages`) that are neither done nor submitted by their owner."""
  here = runs.Run(os.path.join(root, run.name))
  return [f'{s.name} (owned by {run.owners[s.name]})' for s in stages
          if run.owners[s.name] != run.name and not here.is_done(s.name)
          and (run.owners[s.name], s.name) not in (submitted or {})]


def each_when_ready(sweep_runs: list[SweepRun], waits, start) -> dict[str, int]:
  """Calls start(run) for every run once waits(run) is empty (the owners of its shared stages
  went first); returns {name: exit status}. Runs still waiting when no other can start are not
  started (EXIT_BLOCKED): their owner failed, or is a run of the record outside this grid."""
  pending, codes = list(sweep_runs), {}
  while pending:
    ready = next((r for r in pending if not waits(r)), None)
    if ready is None:
      break
    pending.remove(ready)
    codes[ready.name] = start(ready)
  for run in pending:
    print(f'==== {run.name}: not started: what it shares is not done: {", ".join(waits(run))}',
          file=sys.stderr, flush=True)
    codes[run.name] = EXIT_BLOCKED
  return codes


def run_here(root: str, run: SweepRun, stages: list[pipeline.StageCommand], spec: str,
             base: dict[str, str]) -> int:
  """One run through the local pipeline (its lock held as `python -m wm` holds it)."""
  here = runs.Run(os.path.join(root, run.name))
  print(f'==== {run.name}: {here.root}', flush=True)
  lock = os.path.join(here.root, pipeline.LOCK)
  with fileio.claim(lock) as held:
    if not held:
      print(f'==== {run.name}: not run: another pipeline is running there (host and pid: '
            f'{fileio.claim_holder(lock)})', file=sys.stderr, flush=True)
      return cli.EXIT_USER_ERROR
    _, code = pipeline.run_stages(here, stages, spec, {**base, **run.overrides},
                                  flags.FLAGS.parallelism, run.config)
  print(f'==== {run.name}: {"finished" if not code else f"failed (exit status {code})"}',
        flush=True)
  return code


def submit_run(root: str, run: SweepRun, spec: str, base: dict[str, str],
               job_of: dict[tuple[str, str], str]) -> int:
  """Submits `run`'s chain (wm.infra.submit.plan), leaving out the stages it shares: its next job
  waits for the owner's job of such a stage. Records the jobs in RUN/slurm_jobs.json."""
  here, dry = runs.Run(os.path.join(root, run.name)), flags.FLAGS.dry_run
  print(f'==== {run.name}', flush=True)
  env = dict(os.environ, WM_REPO=slurm.REPO_ROOT, WM_PYTHON=sys.executable)
  if not dry:  # each job's log goes there: sbatch does not create it
    os.makedirs(os.path.join(here.root, 'logs'), exist_ok=True)
  previous, jobs = flags.FLAGS.after, []
  for job in submit.plan(here):
    stage, owner = job['stage'], run.owners[job['stage']]
    if owner != run.name:  # the owner's job makes it; its array and finish jobs: one entry
      previous = job_of[(owner, stage)]
      if job['kind'] != 'array':
        jobs.append({'stage': stage, 'kind': 'shared', 'job_id': previous})
        print(f'{stage:11s} shared job {previous:>8s}  of {owner}')
      continue
    job['command'] = ['sbatch', '--parsable', f'--job-name=wm-{stage}', '--kill-on-invalid-dep=yes',
                      *([f'--dependency=afterok:{previous}'] if previous else []), *job['sbatch'],
                      job['script'], *run_flags(here.root, spec, {**base, **run.overrides})]
    job['after'] = previous
    job['job_id'] = previous = (f'<{run.name}:{stage}-{job["kind"]}>' if dry else slurm.submit(
        job['command'], dict(env, **job['env'])))
    job_of[(run.name, stage)] = previous
    jobs.append(job)
    print(f'{stage:11s} {job["kind"]:6s} job {previous:>8s}'
          f'{"  after " + job["after"] if job["after"] else ""}', flush=True)
    if dry:
      print('  ' + shlex.join([f'{k}={v}' for k, v in job['env'].items()] + job['command']))
  if not dry and jobs:
    submit.record(here, jobs)
  return 0


def wait_for_jobs(job_of: dict[tuple[str, str], str]) -> dict[str, int]:
  """--wait: every submitted job's end; {run: 1} for the runs with a job that did not complete."""
  states = slurm.wait(sorted(set(job_of.values())))
  bad = {k: v for k, v in states.items() if v != 'COMPLETED'}
  print('all jobs completed' if not bad else f'jobs that did not complete: {bad}', flush=True)
  return {name: 1 for (name, _), job in job_of.items() if job.split('_')[0] in
          {k.split('_')[0] for k in bad}}


# ------------------------------------------------------------------------ entry point

def read_record(root: str) -> dict | None:
  path = os.path.join(root, RECORD)
  if not os.path.exists(path):
    return None
  try:
    return fileio.read_json(path)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} is unreadable ({e}): it records which runs share which stages; '
                    'restore it, or sweep into another --root') from None


def plan(root: str, record: dict | None) -> tuple[list[SweepRun], str, dict[str, str]]:
  """The runs of --grid with their owners, every check passed; the config spec; the base
  overrides. --config defaults to the one the record holds."""
  spec = (flags.FLAGS.config if flags.FLAGS['config'].present or not record
          else record['config'])
  base = cli.overrides()
  sweep_runs = expand(spec, base, parse_grid(_GRID.value))
  share(sweep_runs, record)
  refuse_changes(sweep_runs, record)
  problems = link_problems(root, sweep_runs)
  if problems:
    raise UserError(f'the run dirs in {root} do not fit what the sweep shares (move these away, '
                    f'or sweep into another --root): {"; ".join(problems)}')
  return sweep_runs, spec, base


def execute(root: str, sweep_runs: list[SweepRun], spec: str, base: dict[str, str]) -> dict:
  """Runs or submits every run (or prints what it would, --dry_run); {run: exit status}."""
  stages = pipeline.selected_stages()
  if _SLURM.value:
    if not flags.FLAGS.dry_run and not flags.FLAGS.allow_active:
      for run in sweep_runs:  # all checked before any is submitted
        submit.refuse_if_active(runs.Run(os.path.join(root, run.name)))
    job_of = {}
    codes = each_when_ready(sweep_runs, lambda r: waiting_for(root, r, stages, job_of),
                            lambda r: submit_run(root, r, spec, base, job_of))
    if flags.FLAGS.wait and not flags.FLAGS.dry_run and job_of:
      codes.update(wait_for_jobs(job_of))
    return codes
  if flags.FLAGS.dry_run:
    for run in sweep_runs:
      chosen = [f'--stages={",".join(flags.FLAGS.stages)}'] if flags.FLAGS.stages else []
      print('  ' + shlex.join([sys.executable, '-m', 'wm', *run_flags(
          os.path.join(root, run.name), spec, {**base, **run.overrides}), *chosen]))
    return {}
  return each_when_ready(sweep_runs, lambda r: waiting_for(root, r, stages),
                         lambda r: run_here(root, r, stages, spec, base))


def sweep(root: str) -> dict[str, int]:
  """Plans, records and runs (or submits) the sweep; {run: exit status}."""
  sweep_runs, spec, base = plan(root, read_record(root))  # every check before any write
  if flags.FLAGS.dry_run:  # writes nothing
    print(describe_sharing(sweep_runs), flush=True)
    return execute(root, sweep_runs, spec, base)
  os.makedirs(root, exist_ok=True)
  with fileio.claim(os.path.join(root, LOCK)) as held:
    if not held:
      raise UserError(f'another sweep is running in {root} (host and pid: '
                      f'{fileio.claim_holder(os.path.join(root, LOCK))}): wait for it to finish')
    record = read_record(root)  # again, now that no other sweep can write it
    sweep_runs, spec, base = plan(root, record)
    print(describe_sharing(sweep_runs), flush=True)
    apply(root, sweep_runs, record, {'config': spec, 'overrides': base,
                                     'grid': parse_grid(_GRID.value)})
    return execute(root, sweep_runs, spec, base)


@cli.exits_on_user_error
def _main(argv: list[str]) -> None:
  del argv  # parse() refused positional arguments
  if not _ROOT.value:
    raise UserError('--root is required: the folder that holds the sweep\'s runs')
  root = os.path.abspath(_ROOT.value)
  codes = {} if _SUMMARY.value else sweep(root)
  if not flags.FLAGS.dry_run or _SUMMARY.value:
    print(sweep_summary.write(root), flush=True)
  failed = {name: code for name, code in codes.items() if code}
  if failed:
    print(f'== runs that did not finish: {", ".join(failed)}', file=sys.stderr, flush=True)
    sys.exit(next(iter(failed.values())))


def parse(argv: list[str]) -> list[str]:
  """absl's flags_parser: cli.parse_flags, --help listing KEY_FLAGS."""
  return cli.parse_flags(argv, KEY_FLAGS)


def main(argv: list[str]) -> None:
  """`python -m wm.infra.sweep ARGS` (or `python -m wm sweep ARGS`): `argv` is ARGS alone."""
  quiet.install()  # before the summary imports TensorFlow
  app.run(_main, argv=[sys.argv[0], *argv], flags_parser=parse)


if __name__ == '__main__':
  main(sys.argv[1:])
