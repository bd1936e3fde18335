"""What every stage script shares: flags, config loading, the run dir, snapshot, error exits.

A stage script is

    def main(stage: cli.Stage):
      ...  # stage.config, stage.run, stage.dir

    if __name__ == '__main__':
      cli.run('vae', main)

`--config=PATH.py:PRESET` picks the experiment (default: the run dir's config.json if there is
one, else configs/carracing.py:small) and `--config.section.field=value` overrides any field.
A `UserError` is printed as one clear message (no traceback) and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

from absl import app, flags, logging

from wm import config as config_lib
from wm import fileio, runs, snapshot
from wm.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('config', config_lib.DEFAULT_CONFIG,
                    'Experiment config PATH.py:PRESET. Override fields with '
                    '--config.section.field=value. Default: RUN/config.json when it exists.')
flags.DEFINE_string('run_dir', None, 'Run directory every stage reads from and writes to.')
flags.DEFINE_bool('store_snapshot', True, 'Archive code, config and context into the stage dir.')

EXIT_USER_ERROR = 2


def define_task_flags(unit: str) -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """--num_tasks / --task_index: this job's share of the `unit`s (SLURM array tasks)."""
  num_tasks = flags.DEFINE_integer('num_tasks', 1, 'Jobs sharing the work (SLURM array size).',
                                   lower_bound=1)
  task_index = flags.DEFINE_integer('task_index', 0, f'This job\'s share: the {unit} k with '
                                    'k % num_tasks == task_index.', lower_bound=0)
  flags.register_multi_flags_validator(
      ['num_tasks', 'task_index'], lambda f: f['task_index'] < f['num_tasks'],
      message='--task_index must be smaller than --num_tasks')
  return num_tasks, task_index
_OVERRIDES: dict[str, str] = {}


@dataclasses.dataclass
class Stage:
  name: str  # stage key in wm.runs.STAGE_DIRS
  config: config_lib.Config  # resolved, validated config
  run: runs.Run  # the run directory
  overrides: dict[str, str]  # the --config.* overrides as given

  @property
  def dir(self) -> str:
    return self.run.stage_dir(self.name)


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) from the other arguments."""
  rest, overrides = [], {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      key, eq, value = arg[len('--config.'):].partition('=')
      if not eq:
        if i + 1 >= len(argv):
          raise UserError(f'{arg} needs a value: {arg}=VALUE')
        value = argv[i + 1]
        i += 1
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def resolve_config(run_dir: str | None, overrides: dict[str, str]) -> config_lib.Config:
  """The run dir's config unless --config was given, with overrides applied and validated."""
  run_config = run_dir and os.path.join(run_dir, 'config.json')
  if not FLAGS['config'].present and run_config and os.path.exists(run_config):
    config = config_lib.load_json(run_config)
  else:
    config = config_lib.load(FLAGS.config)
  config_lib.apply_overrides(config, overrides)
  return config_lib.validate(config)


def start(name: str, require_run_dir: bool = True) -> Stage:
  """Resolves the config, then (only once it is valid) creates the stage dir and snapshot."""
  if require_run_dir and not FLAGS.run_dir:
    raise UserError('--run_dir is required: the folder every stage reads and writes')
  config = resolve_config(FLAGS.run_dir, _OVERRIDES)
  stage = Stage(name, config, runs.Run(FLAGS.run_dir), dict(_OVERRIDES))
  os.makedirs(stage.dir, exist_ok=True)
  if not os.path.exists(stage.run.config_path):
    save_run_config(stage)
  if FLAGS.store_snapshot:
    path = snapshot.write(stage.dir, config, stage.overrides)
    logging.info('snapshot: %s', path)
  return stage


def save_run_config(stage: Stage) -> None:
  """RUN/config.json: the config later stages default to (refreshed when a stage succeeds)."""
  fileio.write_text(stage.run.config_path, config_lib.to_json(stage.config) + '\n')


def run(name: str, main: Callable[[Stage], None], require_run_dir: bool = True) -> None:
  """Parses flags and runs `main(stage)`, turning a UserError into a message and exit 2."""

  def parse(argv: list[str]) -> list[str]:
    try:
      rest, overrides = split_overrides(argv)
    except UserError as e:
      _fail(e)
    _OVERRIDES.update(overrides)
    try:
      return FLAGS(rest)
    except flags.Error as e:
      _fail(e)

  def wrapped(argv: list[str]) -> None:
    if len(argv) > 1:
      _fail(UserError(f'unexpected arguments {argv[1:]}; flags look like --name=value'))
    try:
      stage = start(name, require_run_dir)
      main(stage)
      save_run_config(stage)
    except UserError as e:
      _fail(e)

  app.run(wrapped, flags_parser=parse)


def _fail(error: Exception) -> None:
  print(f'error: {error}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)
