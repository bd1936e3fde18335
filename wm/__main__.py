"""`python -m wm`: the pipeline, and subcommands that look at runs and configs.

    python -m wm --run_dir=RUN --config=FILE:PRESET    every stage in order (wm/infra/pipeline.py)
    python -m wm status RUN [RUN ...] [--json] [--curves]  where runs stand (wm/infra/status.py)
    python -m wm config FILE:PRESET [--changed]         every config field: value, default, meaning
    python -m wm sweep --root=DIR --grid F=V1,V2 ...    a grid of runs (wm/infra/sweep.py)
    python -m wm iterate --run_dir=RUN                  rounds of the paper's iterative training
                                                        (wm/infra/iterate.py)
    python -m wm clean RUN [RUN ...] --rollouts         remove rollouts once sharded, and with
                                       --records        raw shards once encoded (wm/infra/clean.py)

The pipeline skips finished stages, so rerunning the same command continues; `--config.a.b=v`
overrides go to every stage. `python -m wm SUBCOMMAND --help` lists a subcommand's flags.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Callable

from absl import app, flags

from wm import config as config_lib
from wm.errors import UserError
from wm.infra import cli

def as_program(usage: str, module: str | None = None) -> None:
  """Makes --help print `usage` above the flags, and list those `module` defines."""
  globals()['__doc__'] = usage  # absl prints __main__'s docstring
  for flag in flags.FLAGS.get_flags_for_module(module) if module else ():
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run_status(argv: list[str]) -> None:
  from wm.infra import status  # pylint: disable=import-outside-toplevel
  as_program(status.__doc__, status.__name__)
  app.run(status.main, argv=[sys.argv[0], *argv], flags_parser=status.parse)


def run_sweep(argv: list[str]) -> None:
  """wm.infra.sweep's main(argv), which parses the arguments after `sweep` itself."""
  try:
    module = importlib.import_module('wm.infra.sweep')
  except ModuleNotFoundError as e:
    if e.name != 'wm.infra.sweep':
      raise
    cli.fail(UserError('python -m wm sweep: this checkout has no wm/infra/sweep.py; update it, '
                       'or run each config alone: python -m wm --run_dir=RUN --config=FILE:PRESET'))
  if not callable(getattr(module, 'main', None)):
    cli.fail(UserError(f'python -m wm sweep: {module.__file__} defines no main(argv)'))
  as_program(module.__doc__, module.__name__)
  module.main(argv)


_CONFIG_OVERRIDES: dict[str, str] = {}  # python -m wm config's --config.a.b=v, as given


def run_config(argv: list[str]) -> None:
  flags.DEFINE_bool('changed', False, 'List only the fields the preset or an override changed.')
  as_program(inspect.cleandoc(config_main.__doc__) + '\n')
  app.run(config_main, argv=[sys.argv[0], *argv], flags_parser=parse_config)


def parse_config(argv: list[str]) -> list[str]:
  """python -m wm config's flags_parser: one FILE:PRESET (or run dir), --changed, overrides."""
  try:
    rest, found = cli.split_overrides(argv)
    remaining = flags.FLAGS(rest)
  except (UserError, flags.Error) as e:
    cli.fail(e)
  if len(remaining) != 2:
    cli.fail(UserError(f'python -m wm config takes one FILE:PRESET or run dir, got '
                       f'{remaining[1:]} (e.g. python -m wm config {config_lib.DEFAULT_CONFIG})'))
  _CONFIG_OVERRIDES.update(found)
  return remaining


@cli.exits_on_user_error
def config_main(argv: list[str]) -> None:
  """Lists every field of a config: its value, default, type and meaning (the comment after the
  field in wm/config.py), marking those the preset (*) or a --config.a.b=v override (+) changed.

    python -m wm config configs/carracing.py:small [--changed] [--config.a.b=v ...]
    python -m wm config RUN                          # the run's RUN/config.json
  """
  spec = argv[1]
  if os.path.isdir(spec) or spec.endswith('.json'):
    path = os.path.join(spec, 'config.json') if os.path.isdir(spec) else spec
    config = config_lib.load_json(path, fix='pass a run dir a stage has started, or FILE:PRESET')
  else:
    config = config_lib.load(spec)
  config_lib.validate(config_lib.apply_overrides(config, _CONFIG_OVERRIDES))
  print(config_lib.listing(config, _CONFIG_OVERRIDES, only_changed=flags.FLAGS.changed))


def run_iterate(argv: list[str]) -> None:
  from wm.infra import iterate, pipeline  # pylint: disable=import-outside-toplevel
  as_program(iterate.__doc__, pipeline.__name__)
  app.run(iterate.main, argv=[sys.argv[0], *argv], flags_parser=iterate.parse)


def run_clean(argv: list[str]) -> None:
  from wm.infra import clean  # pylint: disable=import-outside-toplevel
  as_program(clean.__doc__, clean.__name__)
  app.run(clean.main, argv=[sys.argv[0], *argv], flags_parser=clean.parse)


# The first argument picks one, run on the arguments after it. Only its module is imported: each
# defines its own flags.
SUBCOMMANDS: dict[str, Callable[[list[str]], None]] = {
    'status': run_status, 'config': run_config, 'sweep': run_sweep, 'iterate': run_iterate,
    'clean': run_clean}


def run_pipeline() -> None:
  from wm.infra import pipeline  # pylint: disable=import-outside-toplevel
  app.run(pipeline.main, flags_parser=pipeline.parse)


def main() -> None:
  first = sys.argv[1] if len(sys.argv) > 1 else '-'
  if first in SUBCOMMANDS:
    SUBCOMMANDS[first](sys.argv[2:])
  elif not first.startswith('-'):  # the pipeline takes flags only
    cli.fail(UserError(f'unknown subcommand {first!r}; subcommands: {", ".join(SUBCOMMANDS)}, '
                       'or flags alone for the pipeline (python -m wm --help)'))
  else:
    run_pipeline()


if __name__ == '__main__':
  main()
