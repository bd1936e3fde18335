"""Runs every stage in order on one machine, skipping stages whose DONE marker exists.

    python -m wm.pipeline --run_dir=runs/small --config=configs/carracing.py:small [--parallelism=2]

Each stage runs as its own process (`scripts/<stage>.py`), exactly as it would alone or under
SLURM, so a stage that fails stops the pipeline with its own message and exit status, and a
rerun continues where it stopped. Extra `--config.a.b=v` overrides are passed to every stage.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

from absl import app, flags

from wm import cli, runs
from wm.config import REPO_ROOT

_PARALLELISM = flags.DEFINE_integer('parallelism', os.cpu_count() or 1,
                                    'Worker processes for the parallel stages.')
_STAGES = flags.DEFINE_list('stages', None, 'Only these stages (default: all).')


@dataclasses.dataclass
class StageCommand:
  name: str  # stage key (wm/runs.py)
  script: str  # scripts/<script>.py
  args: tuple[str, ...] = ()  # fixed extra flags of the one-machine run
  parallel: bool = False  # takes --parallelism


STAGES = [
    StageCommand('collect', 'collect_rollouts', parallel=True),
    StageCommand('shard', 'shard_rollouts', parallel=True),
    StageCommand('vae', 'train_vae'),
    StageCommand('encode', 'encode_rollouts', ('--num_outer_shards=1', '--outer_shard_index=0',
                                               '--num_sub_shards=1')),
    StageCommand('seq', 'train_sequence_model'),
    StageCommand('controller', 'train_controller', parallel=True),
    StageCommand('evaluate', 'evaluate', parallel=True),
]


def stage_argv(stage: StageCommand, run_dir: str, config: str, overrides: dict[str, str],
               parallelism: int) -> list[str]:
  argv = [sys.executable, os.path.join(REPO_ROOT, 'scripts', stage.script + '.py'),
          f'--run_dir={run_dir}', f'--config={config}']
  argv += [f'--config.{k}={v}' for k, v in overrides.items()]
  argv += list(stage.args)
  if stage.parallel:
    argv.append(f'--parallelism={parallelism}')
  return argv


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  if not flags.FLAGS.run_dir:
    sys.exit('error: --run_dir is required')
  # Refuse a bad config before anything runs.
  try:
    cli.resolve_config(None, cli._OVERRIDES)
  except cli.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(cli.EXIT_USER_ERROR)
  run = runs.Run(flags.FLAGS.run_dir)
  wanted = _STAGES.value or [s.name for s in STAGES]
  timings = []
  for stage in STAGES:
    if stage.name not in wanted:
      continue
    if run.is_done(stage.name):
      print(f'== {stage.name}: done already ({run.done_path(stage.name)})', flush=True)
      timings.append((stage.name, 'skipped'))
      continue
    print(f'== {stage.name}', flush=True)
    start = time.perf_counter()
    code = subprocess.call(stage_argv(stage, run.root, flags.FLAGS.config, cli._OVERRIDES,
                                      _PARALLELISM.value))
    if code != 0:
      print(f'== {stage.name} failed with exit status {code}; fix and rerun the same command',
            file=sys.stderr, flush=True)
      sys.exit(code)
    timings.append((stage.name, f'{time.perf_counter() - start:.1f}s'))
  print('== summary')
  for name, took in timings:
    print(f'  {name:12s} {took}')


def parse(argv: list[str]) -> list[str]:
  rest, overrides = cli.split_overrides(argv)
  cli._OVERRIDES.update(overrides)
  return flags.FLAGS(rest)


if __name__ == '__main__':
  app.run(main, flags_parser=parse)
