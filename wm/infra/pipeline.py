"""Runs every stage in order on one machine, skipping stages whose DONE marker exists.

    python -m wm --run_dir=runs/small --config=configs/carracing.py:small [--parallelism=2]

Each stage runs as its own process (`scripts/<stage>.py`), exactly as it would alone or under
SLURM, so a stage that fails stops the pipeline with its own message and exit status, and a
rerun continues where it stopped. Extra `--config.a.b=v` overrides are passed to every stage.
The end summary lists each stage's time, the size of its outputs and what its DONE marker
records (the final score, once the evaluation stage has run). One pipeline at a time runs in a run
dir: a second one is refused, naming the first (RUN/.pipeline.claim, a lease as in
wm/fileio.claim). A stage that exits 0 without its DONE stops the pipeline. A finished stage
whose inputs changed since it ran (V trained further after encoding) is redone, or refused with
what to do where redoing would resume from the old inputs (CANNOT_REDO).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time

from absl import app, flags

from wm import config as config_lib
from wm.config import REPO_ROOT
from wm.errors import UserError
from wm.infra import changes, cli, fileio, runs, snapshot, workers

_PARALLELISM = flags.DEFINE_integer('parallelism', os.cpu_count() or 1,
                                    'Worker processes for the parallel stages.')
_STAGES = flags.DEFINE_list('stages', None, 'Only these stages (default: all).')


LOCK = '.pipeline'  # RUN/.pipeline.claim: held (and renewed) while a pipeline runs stages there
EXIT_INCOMPLETE = 3  # a stage exited 0 without its DONE marker
KEY_FLAGS = ('run_dir', 'config', 'stages', 'parallelism')  # what `python -m wm --help` lists


# Finished stages whose inputs changed (wm/infra/runs.py: stale_reason) are redone, except these, whose
# training would resume from a state made with the old inputs: they are refused with the fix.
CANNOT_REDO = {
    'seq': 'M learned the old latents and resuming would keep it: move RUN/seq away to train M '
           'afresh on the new ones (or restore the earlier V and encoding), then rerun',
    'controller': 'its search ran through the old V and M: move RUN/controller away to search '
                  'again with the new ones, then rerun',
}

READS_RAW_SHARDS = ('vae', 'encode')  # the stages refused after `python -m wm clean --records`


@dataclasses.dataclass
class StageCommand:
  name: str  # stage key (wm/infra/runs.py)
  script: str  # scripts/<script>.py
  args: tuple[str, ...] = ()  # fixed extra flags of the one-machine run
  parallel: bool = False  # takes --parallelism


STAGES = [
    StageCommand('collect', 'collect_rollouts', parallel=True),
    StageCommand('shard', 'shard_rollouts', parallel=True),
    StageCommand('vae', 'train_vae'),
    StageCommand('encode', 'encode_rollouts', ('--num_outer_shards=1', '--outer_shard_index=0',
                                               '--num_sub_shards=1')),
    StageCommand('seq', 'train_sequence_model', parallel=True),  # M beside its judges
    StageCommand('controller', 'train_controller', parallel=True),
    StageCommand('evaluate', 'evaluate', parallel=True),
    StageCommand('play', 'play', ('--record_file=agent.mp4', '--alg_render')),  # a short video
]


@dataclasses.dataclass
class StageReport:
  name: str
  status: str  # ran | skipped | failed
  seconds: float = 0.0
  files: int = 0  # files under the stage dir
  bytes: int = 0  # their total size
  done: dict = dataclasses.field(default_factory=dict)  # what the DONE marker records


def stage_argv(stage: StageCommand, run_dir: str, config: str | None, overrides: dict[str, str],
               parallelism: int) -> list[str]:
  argv = [sys.executable, os.path.join(REPO_ROOT, 'scripts', stage.script + '.py'),
          f'--run_dir={run_dir}']
  if config:
    argv.append(f'--config={config}')
  argv += [f'--config.{k}={v}' for k, v in overrides.items()]
  argv += list(stage.args)
  if stage.parallel:
    argv.append(f'--parallelism={parallelism}')
  return argv


def log_path(run: runs.Run, stage: str) -> str:
  """RUN/logs/<stage>.log: every local run of the stage appends to it (SLURM jobs write
  RUN/logs/<stage>-<job>.log)."""
  return os.path.join(run.root, 'logs', f'{stage}.log')


def run_logged(argv: list[str], path: str) -> int:
  """Runs a stage, its stdout and stderr shown here and appended to `path`; its exit status."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'ab') as log:
    log.write(f'== {time.strftime("%F %T")} {" ".join(argv)}\n'.encode())
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=workers.end_with_parent)
    try:
      for line in iter(proc.stdout.readline, b''):
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        log.write(line)
        log.flush()
    finally:
      code = proc.wait()
    log.write(f'== exit status {code}\n'.encode())
  return code


def folder_size(path: str) -> tuple[int, int]:
  """(files, bytes) under `path`: what the stage made, its snapshots (snapshot/ and a side
  result's snapshot-NAME/), TensorBoard and progress.json left out."""
  files = size = 0
  for root, dirs, names in os.walk(path):
    dirs[:] = [d for d in dirs if d != 'tb' and not snapshot.is_folder(d)]  # not outputs
    for name in (n for n in names if n != 'progress.json'):  # what the stage made, not its state
      try:
        size += os.path.getsize(os.path.join(root, name))
        files += 1
      except OSError:
        pass
  return files, size


def report(run: runs.Run, name: str, status: str, seconds: float = 0.0) -> StageReport:
  files, size = folder_size(run.stage_dir(name))
  done = {}
  if run.is_done(name):
    done = fileio.read_json(run.done_path(name))
    done.pop('finished_at', None)
  return StageReport(name, status, seconds, files, size, done)


def _show(value, root: str) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value).replace(root, 'RUN')


def summary(reports: list[StageReport], total_s: float, root: str = '') -> str:
  lines = [f'== summary ({total_s:.1f}s in all)',
           f'  {"stage":11s} {"status":8s} {"time":>8s} {"files":>6s} {"size":>10s}  result']
  for r in reports:
    took = f'{r.seconds:.1f}s' if r.status != 'skipped' else '-'
    result = ', '.join(f'{k}={_show(v, root or "RUN")}' for k, v in r.done.items()
                       if not isinstance(v, (dict, list)))
    lines.append(f'  {r.name:11s} {r.status:8s} {took:>8s} {r.files:6d} '
                 f'{r.bytes / 2**20:9.1f}M  {result}')
  score = next((r.done['mean'] for r in reports if r.name == 'evaluate' and 'mean' in r.done),
               None)
  if score is not None:
    lines.append(f'  final score (evaluate: mean return): {_show(score, root)}')
  return '\n'.join(lines)


def finished_stage(run: runs.Run, name: str, tag: str, resolved: dict | None,
                   redone: set[str]) -> str:
  """What to do with a stage whose DONE exists: 'skip', 'run' (its DONE cleared: redo it) or
  'refuse' (said why on stderr). Changed settings first (wm/infra/changes.py), then inputs that
  changed since it ran (wm/infra/runs.py stale_reason)."""
  verdict, why = changes.decide(run, name, resolved) if resolved else ('keep', '')
  if verdict == 'refuse':
    print(f'== {tag}: {why}', file=sys.stderr, flush=True)
    return 'refuse'
  if verdict == 'keep' and name == 'shard' and 'collect' in redone:
    verdict, why = 'redo', 'collect was topped up: the new rollouts are sharded'
  if verdict == 'keep':
    why = run.stale_reason(name)
    if why is None:
      print(f'== {tag}: done already ({run.done_path(name)})', flush=True)
      return 'skip'
    if name in CANNOT_REDO:
      print(f'== {tag}: {why}; {CANNOT_REDO[name]}', file=sys.stderr, flush=True)
      return 'refuse'
  removed = runs.raw_shards_removed(run) if name in READS_RAW_SHARDS else None
  if removed:
    print(f'== {tag}: {why}, but redoing it reads the raw shards: {removed}', file=sys.stderr,
          flush=True)
    return 'refuse'
  print(f'== {tag}: redoing it: {why}', flush=True)
  run.clear_done(name)
  redone.add(name)
  return 'run'


def run_stages(run: runs.Run, stages: list[StageCommand], config: str | None,
               overrides: dict[str, str], parallelism: int,
               resolved: dict | None = None) -> tuple[list[StageReport], int]:
  """Runs the stages in order; returns their reports and the failing exit status (or 0).
  `resolved` (the config as a dict) lets finished stages be checked against it."""
  reports, redone = [], set()
  for i, stage in enumerate(stages, 1):
    tag = f'[{i}/{len(stages)}] {stage.name}'
    if run.is_done(stage.name):
      action = finished_stage(run, stage.name, tag, resolved, redone)
      if action == 'skip':
        reports.append(report(run, stage.name, 'skipped'))
        continue
      if action == 'refuse':
        reports.append(report(run, stage.name, 'failed'))
        return reports, cli.EXIT_USER_ERROR
    argv = stage_argv(stage, run.root, config, overrides, parallelism)
    print(f'== {tag}: started {time.strftime("%H:%M:%S")}: scripts/{stage.script}.py', flush=True)
    start = time.perf_counter()
    code = run_logged(argv, log_path(run, stage.name))
    took = time.perf_counter() - start
    if code != 0:
      print(f'== {tag} failed with exit status {code} after {took:.1f}s; fix and rerun the '
            'same command: finished stages are skipped', file=sys.stderr, flush=True)
      reports.append(report(run, stage.name, 'failed', took))
      return reports, code
    if not run.is_done(stage.name):
      print(f'== {tag} exited 0 but did not mark itself done ({run.done_path(stage.name)} is '
            'missing): its output above says what is incomplete; the later stages were not run. '
            'Rerun the same command to continue.', file=sys.stderr, flush=True)
      reports.append(report(run, stage.name, 'failed', took))
      return reports, EXIT_INCOMPLETE
    reports.append(report(run, stage.name, 'ran', took))
    r = reports[-1]
    print(f'== {tag}: finished in {took:.1f}s: {r.files} files, {r.bytes / 2**20:.1f} MB in '
          f'{run.stage_dir(stage.name)}', flush=True)
  return reports, 0


def selected_stages() -> list[StageCommand]:
  """The stages --stages names (default: all), in pipeline order; an unknown name is refused."""
  names = [s.name for s in STAGES]
  wanted = _STAGES.value or names
  unknown = sorted(set(wanted) - set(names))
  if unknown:
    raise UserError(f'--stages: unknown {unknown}; stages: {names}')
  return [s for s in STAGES if s.name in wanted]


@contextlib.contextmanager
def run_lock(root: str):
  """Holds RUN/.pipeline.claim while stages run there (the pipeline's, or iterate's); a second
  holder is refused, naming the first."""
  with fileio.claim(os.path.join(root, LOCK)) as held:
    if not held:
      raise UserError(
          f'another pipeline is running in {root} (host and pid: '
          f'{fileio.claim_holder(os.path.join(root, LOCK))}): wait for it to finish. If it '
          'was killed, its lock is taken over at once on the same host, or after '
          f'{fileio.LEASE_S:.0f}s unrenewed from another host.')
    yield


@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  del argv  # parse() refused positional arguments
  if not flags.FLAGS.run_dir:
    raise UserError('--run_dir is required: the folder every stage reads and writes')
  # Refuse a bad config or stage list before anything runs.
  resolved = config_lib.to_dict(cli.resolve_config(flags.FLAGS.run_dir, cli.overrides()))
  stages = selected_stages()
  run = runs.Run(flags.FLAGS.run_dir)
  config = flags.FLAGS.config if flags.FLAGS['config'].present else None
  os.makedirs(run.root, exist_ok=True)
  with run_lock(run.root):
    start = time.perf_counter()
    reports, code = run_stages(run, stages, config, cli.overrides(), _PARALLELISM.value,
                               resolved)
  print(summary(reports, time.perf_counter() - start, run.root), flush=True)
  if code:
    sys.exit(code)


def parse(argv: list[str]) -> list[str]:
  """absl's flags_parser for the pipeline: cli.parse_flags, --help listing KEY_FLAGS."""
  return cli.parse_flags(argv, KEY_FLAGS)


if __name__ == '__main__':
  app.run(main, flags_parser=parse)
