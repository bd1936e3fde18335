"""`python -m wm`: the pipeline, and subcommands that look at runs and configs.

    python -m wm --run_dir=RUN --config=FILE:PRESET    every stage in order (wm/infra/pipeline.py)
    python -m wm status RUN [RUN ...] [--json]          where runs stand (wm/infra/status.py)
    python -m wm sweep ...                              several configs at once (wm/infra/sweep.py)

The pipeline skips finished stages, so rerunning the same command continues; `--config.a.b=v`
overrides go to every stage. `python -m wm SUBCOMMAND --help` lists a subcommand's flags.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from absl import app, flags

from wm.errors import UserError

# A subcommand's (main, flags_parser), as absl's app.run takes them.
Entry = tuple[Callable[[list[str]], None], Callable[[list[str]], list[str]]]


def _status() -> Entry:
  from wm.infra import status  # pylint: disable=import-outside-toplevel
  return status.main, status.parse


def _sweep() -> Entry:
  """wm.infra.sweep's main(argv), and its parse(argv) if it has one."""
  try:
    module = importlib.import_module('wm.infra.sweep')
  except ModuleNotFoundError as e:
    if e.name != 'wm.infra.sweep':
      raise
    raise UserError('python -m wm sweep: this checkout has no wm/infra/sweep.py; update it, or '
                    'run each config alone: python -m wm --run_dir=RUN --config=FILE:PRESET'
                    ) from None
  if not callable(getattr(module, 'main', None)):
    raise UserError(f'python -m wm sweep: {module.__file__} defines no main(argv)')
  return module.main, getattr(module, 'parse', parse_plain)


def parse_plain(argv: list[str]) -> list[str]:
  """absl's flags_parser for a subcommand without its own: a bad flag is one message, exit 2."""
  from wm.infra import cli  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cli.fail(e)
    raise  # not reached: fail() exits


# The first argument picks one; only its module is imported (each defines its own flags).
SUBCOMMANDS: dict[str, Callable[[], Entry]] = {'status': _status, 'sweep': _sweep}


def run_subcommand(name: str, argv: list[str]) -> None:
  """Runs subcommand `name` on `argv` (what follows its name) as if it were its own program."""
  from wm.infra import cli  # pylint: disable=import-outside-toplevel
  try:
    main, parse = SUBCOMMANDS[name]()
  except UserError as e:
    cli.fail(e)
  module = sys.modules[main.__module__]
  for flag in flags.FLAGS.get_flags_for_module(module.__name__):  # listed by --help
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  globals()['__doc__'] = module.__doc__ or __doc__  # what --help prints above the flags
  app.run(main, argv=[sys.argv[0], *argv], flags_parser=parse)


def run_pipeline() -> None:
  from wm.infra import pipeline  # pylint: disable=import-outside-toplevel
  app.run(pipeline.main, flags_parser=pipeline.parse)


def main() -> None:
  first = sys.argv[1] if len(sys.argv) > 1 else '-'
  if first in SUBCOMMANDS:
    run_subcommand(first, sys.argv[2:])
  elif not first.startswith('-'):  # the pipeline takes flags only
    from wm.infra import cli  # pylint: disable=import-outside-toplevel
    cli.fail(UserError(f'unknown subcommand {first!r}; subcommands: {", ".join(SUBCOMMANDS)}, '
                       'or flags alone for the pipeline (python -m wm --help)'))
  else:
    run_pipeline()


if __name__ == '__main__':
  main()
