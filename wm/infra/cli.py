"""What every stage script shares: flags, config loading, the run dir, snapshot, error exits.

A stage script is

    def main(stage: cli.Stage):
      ...  # stage.config, stage.run, stage.dir

    if __name__ == '__main__':
      cli.run('vae', main)

`--config=PATH.py:PRESET` picks the experiment and `--config.section.field=value` overrides any
field. The run's config is RUN/config.json, written when the run starts (by the first stage, with
its overrides); without --config later stages read it, and refuse a run dir that has none. An
override given to a later stage applies to that stage only (its snapshot records it) unless
--save_config asks to keep it; an explicit --config rewrites RUN/config.json once the stage
succeeds (but for a side result, such as scripts/evaluate.py --output=NAME.json). Everything is
checked (config, env.name, the run dir) before anything is written.
A `UserError` is printed as one clear message (no traceback) and exits with status 2.

Other entry points (`python -m wm`, the SLURM submitter, benchmarks) parse the same way:

    app.run(cli.exits_on_user_error(main), flags_parser=cli.parse_flags)

and read the overrides with `cli.overrides()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from typing import Callable, Iterator, Sequence

from absl import app, flags, logging

from wm import config as config_lib
from wm.infra import fileio, runs, snapshot
from wm.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('config', config_lib.DEFAULT_CONFIG,
                    'Experiment config PATH.py:PRESET. Override fields with '
                    '--config.section.field=value. Default: RUN/config.json when it exists. '
                    'Given explicitly, it also rewrites RUN/config.json once the stage succeeds.')
flags.DEFINE_bool('save_config', False, 'Write this stage\'s config, its --config.* overrides '
                  'included, to RUN/config.json once it succeeds, for the later stages. Without '
                  'it, overrides given to a stage of a started run apply to that stage only.')
flags.DEFINE_string('run_dir', None, 'Run directory every stage reads from and writes to.')
flags.DEFINE_bool('store_snapshot', True, 'Archive code, config and context into the stage dir.')

EXIT_USER_ERROR = 2
# Stages whose inputs come from no earlier stage: only these may start a run without --config
# (with the default preset, said in the log). The others need RUN/config.json or --config.
STARTS_RUN = ('collect',)


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


# What a stage script's --help lists besides the script's own flags (absl lists only those of the
# main module): the flags cli defines, where the script has them.
STAGE_KEY_FLAGS = ('run_dir', 'config', 'save_config', 'store_snapshot', 'num_tasks', 'task_index')
_OVERRIDES: dict[str, str] = {}  # set by parse_flags


def refuse_unknown(name: str, choices: Sequence[str], noun: str) -> None:
  """Makes list flag --`name` refuse, as the flags are read (before TensorFlow loads), values
  that are not `choices`: '--work: unknown x; the work is a, b' for noun 'the work is'."""

  def known(values: list[str]) -> bool:
    unknown = sorted(set(values) - set(choices))
    if unknown:
      raise flags.ValidationError(f'--{name}: unknown {", ".join(unknown)}; {noun} '
                                  f'{", ".join(choices)}')
    return True

  flags.register_validator(name, known)


@dataclasses.dataclass
class Stage:
  name: str  # stage key in wm.infra.runs.STAGE_DIRS
  config: config_lib.Config  # resolved, validated config
  run: runs.Run  # the run directory
  overrides: dict[str, str]  # the --config.* overrides as given

  @property
  def dir(self) -> str:
    return self.run.stage_dir(self.name)


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) from the other arguments.

  A flag after `--config.a.b` is no value for it (`--config.seed --run_dir=R` is a mistake).
  """
  rest, found = [], {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      key, eq, value = arg[len('--config.'):].partition('=')
      if not eq:
        if i + 1 >= len(argv) or argv[i + 1].startswith('--'):
          raise UserError(f'{arg} needs a value: {arg}=VALUE')
        value = argv[i + 1]
        i += 1
      found[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, found


def parse_flags(argv: list[str], key_flags: Sequence[str] = ('run_dir', 'config')) -> list[str]:
  """The absl flags_parser of every entry point: sets the `--config.a.b=v` overrides aside (read
  them with overrides()), parses the other flags and refuses positional arguments; a mistake is
  one message and exit 2. --help lists `key_flags` (those defined) with the main module's own.
  """
  for name in key_flags:
    if name in FLAGS:
      FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  try:
    rest, found = split_overrides(argv)
    _OVERRIDES.clear()
    _OVERRIDES.update(found)
    remaining = FLAGS(rest)
  except (UserError, flags.Error) as e:
    fail(e)
  if len(remaining) > 1:
    fail(UserError(f'unexpected arguments {remaining[1:]}; flags look like --name=value'))
  return remaining


def overrides() -> dict[str, str]:
  """The `--config.a.b=v` overrides parse_flags set aside, as given (a copy)."""
  return dict(_OVERRIDES)


def resolve_config(run_dir: str | None, overrides: dict[str, str],
                   stage: str | None = None) -> config_lib.Config:
  """--config if given, else RUN/config.json, else the default preset; overrides applied, validated.

  A `stage` that is not in STARTS_RUN refuses the default: its inputs come from earlier stages, so
  a run dir without config.json is a mistyped --run_dir or a run that was never started.
  """
  run_config = run_dir and os.path.join(run_dir, 'config.json')
  if FLAGS['config'].present:
    config = config_lib.load(FLAGS.config)
  elif run_config and os.path.lexists(run_config):
    config = config_lib.load_json(run_config, fix=_restore_hint(run_dir))
  elif stage is not None and stage not in STARTS_RUN:
    raise UserError(_not_a_run_message(run_dir, stage))
  else:
    logging.warning('no --config and no %s: using the default config %s (pass '
                    '--config=FILE:PRESET to choose another)', run_config or 'run dir',
                    FLAGS.config)
    config = config_lib.load(FLAGS.config)
  config_lib.apply_overrides(config, overrides)
  return config_lib.validate(config)


def run_to_read(needs: str) -> tuple[runs.Run, config_lib.Config]:
  """(--run_dir's run, its config with the --config.* overrides) for a script that only reads
  it (the benchmarks): nothing is written into the run dir. `needs` says what the run must
  hold, in the error for a missing --run_dir."""
  if not FLAGS.run_dir:
    raise UserError(f'--run_dir is required ({needs})')
  return runs.Run(FLAGS.run_dir), resolve_config(FLAGS.run_dir, overrides())


def _not_a_run_message(run_dir: str, stage: str) -> str:
  state = 'does not exist' if not os.path.lexists(run_dir) else 'has no config.json'
  return (f'run dir {run_dir} {state}: stage {stage!r} reads what earlier stages wrote into a '
          f'run (started by scripts/collect_rollouts.py, which writes RUN/config.json). Check '
          f'--run_dir, or pass --config=FILE:PRESET to run this stage there anyway.')


def _restore_hint(run_dir: str) -> str:
  """How to mend a broken RUN/config.json: a stage snapshot's copy, or an explicit --config."""
  copies = [os.path.join(runs.Run(run_dir).stage_dir(name), 'snapshot', 'config.json')
            for name in runs.STAGE_DIRS]
  copies = sorted((p for p in copies if os.path.isfile(p)), key=os.path.getmtime)
  restore = (f'restore it (the latest stage snapshot holds the config that stage ran with: '
             f'cp {copies[-1]} {os.path.join(run_dir, "config.json")})' if copies else
             'restore it')
  return (f'{restore}, or pass --config=FILE:PRESET with the run\'s overrides to rewrite it')


def check_run_dir(run: runs.Run, stage_dir: str) -> None:
  """Creates the run and stage dirs, refusing (naming the path) what cannot be written."""
  for folder in (run.root, stage_dir):
    blocker = _file_in_the_way(folder)
    if blocker == run.root:
      raise UserError(f'--run_dir={run.root} is a file, not a folder: pass a folder (or a path '
                      'that does not exist yet)')
    if blocker:
      raise UserError(f'cannot create {folder}: {blocker} is a file where a folder is expected; '
                      'move it away, or pass another --run_dir')
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as e:
      raise UserError(_write_error(e, folder)) from None
    if not os.access(folder, os.W_OK | os.X_OK):
      raise UserError(f'cannot write into {folder} (Permission denied): make it writable for '
                      'this user, or pass another --run_dir')


def _file_in_the_way(path: str) -> str | None:
  """The nearest existing path at or above `path` when it is not a folder."""
  while not os.path.lexists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return None if os.path.isdir(path) else path


def _write_error(error: OSError, path: str) -> str:
  return (f'cannot write {error.filename or path} ({error.strerror}): make its folder writable '
          'for this user (or free space there), or pass another --run_dir')


def start(name: str, require_run_dir: bool = True,
          check: Callable[[Stage], None] | None = None) -> Stage:
  """Checks the config, the stage's inputs (`check`) and the run dir, then (only once all are
  fine) writes RUN/config.json if the run is new: a refused command leaves the run as it was."""
  if require_run_dir and not FLAGS.run_dir:
    raise UserError('--run_dir is required: the folder every stage reads and writes')
  config = resolve_config(FLAGS.run_dir, overrides(), name)
  stage = Stage(name, config, runs.Run(FLAGS.run_dir), overrides())
  if check:
    check(stage)
  new_run = not os.path.lexists(stage.run.config_path)
  check_run_dir(stage.run, stage.dir)
  log_config(config)
  if new_run:
    save_run_config(stage)
  elif stage.overrides and not FLAGS['config'].present and not FLAGS.save_config:
    logging.info('overrides for this stage only (recorded in its snapshot; %s is unchanged, '
                 '--save_config would keep them): %s', stage.run.config_path, stage.overrides)
  return stage


@contextlib.contextmanager
def snapshot_kept(stage: Stage, name: str = snapshot.FOLDER) -> Iterator[None]:
  """Writes the stage's snapshot (STAGE/`name`) for the work inside. When the stage had finished
  and that work fails with its DONE as it was (refused once TensorFlow loaded, say), the last
  run's snapshot is put back: it still describes the stage's outputs."""
  if not FLAGS.store_snapshot:
    yield
    return
  done = stage.run.done_path(stage.name)
  finished = _read_bytes(done)
  if finished is not None:
    snapshot.set_aside(stage.dir, name)

  def put_back_if_unchanged() -> None:
    if finished is not None and _read_bytes(done) == finished and snapshot.put_back(stage.dir,
                                                                                    name):
      logging.info('the stage is as its last run left it: its snapshot %s is put back',
                   os.path.join(stage.dir, name))

  try:
    path = snapshot.write(stage.dir, stage.config, stage.overrides, name=name)
  except OSError as e:
    put_back_if_unchanged()
    raise UserError(_write_error(e, stage.dir)) from None
  logging.info('snapshot: %s', path)
  try:
    yield
  except BaseException:
    put_back_if_unchanged()
    raise
  snapshot.drop_previous(stage.dir, name)


def _read_bytes(path: str) -> bytes | None:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except FileNotFoundError:
    return None


def log_config(config: config_lib.Config) -> None:
  """Logs each field `config` changes from wm/config.py's defaults (preset and overrides alike),
  so a stage's log says what it ran with (`python -m wm config` lists every field)."""
  changed = config_lib.changed(config)
  for field in changed:
    logging.info('config: %s=%s (default %s)', field.name, config_lib.show(field.value),
                 config_lib.show(field.default))
  if not changed:
    logging.info('config: every field has its default (wm/config.py)')


def save_run_config(stage: Stage) -> None:
  """RUN/config.json: the config the run's later stages use when given no --config."""
  try:
    fileio.write_text(stage.run.config_path, config_lib.to_json(stage.config) + '\n')
  except OSError as e:
    raise UserError(_write_error(e, stage.run.config_path)) from None


def run(name: str, main: Callable[[Stage], None], require_run_dir: bool = True,
        snapshot_name: Callable[[], str] = lambda: snapshot.FOLDER,
        side_result: Callable[[], bool] = lambda: False,
        check: Callable[[Stage], None] | None = None) -> None:
  """Parses flags and runs `main(stage)`, turning a UserError into a message and exit 2.
  `check(stage)` refuses missing or mismatched inputs before anything is written (start()),
  and before TensorFlow loads where it needs none.
  `snapshot_name()`, called once the flags are parsed, names the stage's snapshot folder; when
  `side_result()` (say, an evaluation written beside the stage's own result), an explicit
  --config is for this command alone: RUN/config.json is rewritten only with --save_config."""

  @exits_on_user_error
  def wrapped(argv: list[str]) -> None:
    del argv  # parse_flags refused positional arguments
    stage = start(name, require_run_dir, check)
    with snapshot_kept(stage, snapshot_name()):
      main(stage)
    if FLAGS.save_config or (FLAGS['config'].present and not side_result()):
      save_run_config(stage)  # (a new run's was written by start())
    elif FLAGS['config'].present:
      logging.info('a side result: %s is unchanged (--save_config would rewrite it)',
                   stage.run.config_path)

  app.run(wrapped, flags_parser=functools.partial(parse_flags, key_flags=STAGE_KEY_FLAGS))


def exits_on_user_error(main: Callable) -> Callable:
  """Wraps `main` so that a UserError it raises is one message on stderr and exit 2."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      fail(e)

  return wrapped


def fail(error: Exception) -> None:
  """Prints `error` as one line (no traceback) and exits with EXIT_USER_ERROR."""
  print(f'error: {error}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)
