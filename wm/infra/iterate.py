"""`python -m wm iterate`: the paper's iterative training, for any environment.

    python -m wm iterate --run_dir=RUN [--config=FILE:PRESET] [--config.iterate.iterations=3]

Round 0 is the run itself: every stage up to evaluate, as `python -m wm` runs them. Round k
(1 .. iterate.iterations) is a run dir of its own, RUN/iterations/<k>, so each round's data,
models and scores stay apart, and every stage in it resumes by rerun like any other:

    rollouts/    round k-1's rollouts (relative links) and iterate.rollouts new ones, played by
                 round k-1's controller exploring with collect.action_noise
                 (collect.policy=controller, collect.controller_run=<round k-1>)
    records/, encoded/   all of them, sharded (round k-1's full shards hard-linked:
                 records.reuse_from), and encoded by the new V (with iterate.vae_steps=0,
                 round k-1's V: the latents it gave those shards are copied)
    vae/, seq/   round k-1's checkpoints, trained iterate.vae_steps / iterate.seq_steps further
                 on all the data (the stages' top-up: vae.train_steps, seq.train_steps raised);
                 M's judges (seq.judges: seq/judges/<i>) from theirs, by as many steps
    controller/  round k-1's CMA-ES state, continued for iterate.generations more generations
                 through the new V and M (controller.generations raised); with
                 iterate.search=restart a new search of iterate.generations from scratch,
                 or (iterate.warm_generations) from a dream search in the round's own M
                 (controller.warm_generations: RUN/iterations/<k>/controller/warm)
    evaluate/    the round's controller on the same controller.test_episodes real episodes
    config.json  the round's config: round k-1's with the changes above

On SLURM (`slurm/submit_pipeline.sh --iterate`) each round's stages are jobs, and between rounds
a job runs `python -m wm iterate --run_dir=RUN --after_round=K`: with round K finished, it writes
the summary so far and prepares round K+1 (if any), running no stage.

A round's folder is prepared once (links, copies of the checkpoints and the CMA-ES state, its
config.json); what a kill left unprepared is prepared on the rerun, and finished stages are
skipped. RUN/iterations/summary.md compares the rounds. One iterate (or pipeline) at a time runs
in RUN.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import time

from absl import flags

from wm import artifacts, config as config_lib, es, rollouts
from wm.config import Config
from wm.errors import UserError
from wm.infra import cli, fileio, pipeline, runs

_AFTER_ROUND = flags.DEFINE_integer(
    'after_round', None, 'Run no stage: with round K finished, write the summary so far and '
    'prepare round K+1 when there is one (the job between rounds of slurm/submit_pipeline.sh '
    '--iterate).', lower_bound=0)

FOLDER = 'iterations'  # RUN/iterations/<k>: round k
SUMMARY = 'summary.md'  # RUN/iterations/summary.md
# The stages every round runs (play is the user's: python scripts/play.py --run_dir=...).
ROUND_STAGES = ('collect', 'shard', 'vae', 'encode', 'seq', 'controller', 'evaluate')
# What each trained stage of a round continues from; the first name marks the copy done. The
# controller's best.npz is not carried: see continue_from.
CONTINUED = {'vae': ('checkpoints',), 'seq': ('checkpoints',),
             'controller': (es.STATE, es.HISTORY)}


def round_dir(root: str, k: int) -> str:
  return root if k == 0 else os.path.join(root, FOLDER, str(k))


def round_config(previous: Config, previous_run: runs.Run, settings: config_lib.IterateConfig
                 ) -> Config:
  """Round k's config: round k-1's, collecting with its controller and training on from it. The
  counts continue from what round k-1's DONE markers record it did (overrides given to its
  stages included)."""
  done = {stage: fileio.read_json(previous_run.done_path(stage))
          for stage in ('collect', 'vae', 'seq', 'controller')}
  config = copy.deepcopy(previous)
  config.collect.policy = 'controller'
  config.collect.controller_run = os.path.abspath(previous_run.root)
  config.collect.num_rollouts = done['collect']['rollouts'] + settings.rollouts
  config.records.reuse_from = os.path.abspath(previous_run.root)  # its shards, linked
  config.vae.train_steps = done['vae']['step'] + settings.vae_steps
  config.seq.train_steps = done['seq']['step'] + settings.seq_steps
  config.controller.generations = settings.generations + (
      done['controller']['generations'] if settings.search == 'continue' else 0)
  config.controller.start_from = ''  # a controller searched through round k-1's V and M
  config.controller.warm_generations = settings.warm_generations  # through round k's
  if settings.warm_generations:
    config.controller.dream_generations = 0  # one warm start at a time
  config.iterate = copy.deepcopy(settings)
  return config_lib.validate(config)


def link_rollouts(previous: runs.Run, run: runs.Run) -> int:
  """Links every rollout of round k-1 into round k's folder (relative links to the files
  themselves); returns how many there are."""
  source, target = previous.stage_dir('collect'), run.stage_dir('collect')
  rollouts.require_kept(source, 'a round of iterative training (it adds to them)')
  os.makedirs(target, exist_ok=True)
  indices = rollouts.list_indices(source)
  for index in indices:
    link = rollouts.path_for(target, index)
    if not os.path.lexists(link):
      real = os.path.realpath(rollouts.path_for(source, index))
      os.symlink(os.path.relpath(real, target), link)
  return len(indices)


def continue_from(previous: runs.Run, run: runs.Run, search: str = 'continue') -> None:
  """Copies what V, M (and each of M's judges, seq.judges) and the controller continue from,
  unless the round has started them.

  The CMA-ES search continues (iterate.search=continue; with restart the round's search starts
  from scratch), but not its best: round k-1's best parameters were scored through round k-1's
  V and M, and through the new ones their inputs mean something else (a first try that kept it
  scored 10.7 where round 0 had 599.5, while the continued search's own candidates evaluated at
  547-565). The round's evaluations choose its best anew (es.copy_without_best).
  """
  for stage, names in CONTINUED.items():
    if stage == 'controller' and search == 'restart':
      continue
    _copy_started(previous.stage_dir(stage), run.stage_dir(stage), names)
  for index in judge_indices(previous):  # a judge trains on from its own checkpoints, as M does
    _copy_started(artifacts.seq_judge_run(previous, index).stage_dir('seq'),
                  artifacts.seq_judge_run(run, index).stage_dir('seq'), CONTINUED['seq'])


def judge_indices(run: runs.Run) -> list[int]:
  """The judges of M (seq.judges) that have checkpoints in `run`: RUN/seq/judges/<i>."""
  return [i for i in run.judge_indices() if os.path.isdir(os.path.join(
      artifacts.seq_judge_run(run, i).stage_dir('seq'), CONTINUED['seq'][0]))]


def _copy_started(source: str, target: str, names: tuple[str, ...]) -> None:
  """Copies `names` from folder `source` to `target`, the first last (it marks the copy done);
  nothing when `target` holds the first already (started, or copied before)."""
  if os.path.exists(os.path.join(target, names[0])):
    return
  os.makedirs(target, exist_ok=True)
  for name in reversed(names):
    path = os.path.join(source, name)
    if name == es.STATE:
      es.copy_without_best(source, target)
    elif os.path.isdir(path):
      with fileio.atomic_dir(os.path.join(target, name)) as tmp:
        shutil.copytree(path, tmp, dirs_exist_ok=True)
    elif os.path.exists(path):
      with fileio.atomic_path(os.path.join(target, name)) as tmp:
        shutil.copyfile(path, tmp)


def prepare(root: str, k: int, settings: config_lib.IterateConfig) -> runs.Run:
  """Round k's folder, config, links and copies (idempotent)."""
  previous, run = runs.Run(round_dir(root, k - 1)), runs.Run(round_dir(root, k))
  for stage in ('controller', 'evaluate'):
    if not previous.is_done(stage):
      raise UserError(f'round {k - 1} ({previous.root}) has no finished {stage} stage to '
                      'iterate from; rerun the same command to finish it')
  os.makedirs(run.root, exist_ok=True)
  if not os.path.exists(run.config_path):
    before = config_lib.load_json(previous.config_path)
    config = round_config(before, previous, settings)
    fileio.write_text(run.config_path, config_lib.to_json(config) + '\n')
  linked = link_rollouts(previous, run)
  continue_from(previous, run, config_lib.load_json(run.config_path).iterate.search)
  print(f'== round {k}: {run.root}: {linked} rollouts of round {k - 1} linked, '
        f'{settings.rollouts} to collect with its controller', flush=True)
  return run


def run_round(run: runs.Run, k: int, config: str | None, overrides: dict[str, str],
              parallelism: int) -> int:
  """Runs round k's stages; returns the failing exit status, or 0."""
  stages = [s for s in pipeline.STAGES if s.name in ROUND_STAGES]
  resolved = config_lib.to_dict(cli.resolve_config(run.root, overrides) if k == 0 else
                                config_lib.load_json(run.config_path))
  start = time.perf_counter()
  reports, code = pipeline.run_stages(run, stages, config if k == 0 else None,
                                      overrides if k == 0 else {}, parallelism, resolved)
  print(pipeline.summary(reports, time.perf_counter() - start, run.root), flush=True)
  return code


def summary(root: str, rounds: int) -> str:
  """A markdown table of every finished round: data, training and the real score."""
  lines = ['| round | run dir | rollouts | V steps | M steps | M valid loss | generations | '
           'real score (mean +- std, min, max) |', '|---|---|---|---|---|---|---|---|']
  for k in range(rounds + 1):
    run = runs.Run(round_dir(root, k))
    if not run.is_done('evaluate'):
      break
    done = {s: fileio.read_json(run.done_path(s)) for s in ('collect', 'vae', 'seq',
                                                            'controller', 'evaluate')}
    result = fileio.read_json(os.path.join(run.stage_dir('evaluate'), done['evaluate']['output']))
    valid = done['seq'].get('valid', {}).get('loss')
    lines.append(
        f'| {k} | {os.path.relpath(run.root, root) if k else "."} | '
        f'{done["collect"]["rollouts"]} | {done["vae"]["step"]} | {done["seq"]["step"]} | '
        f'{"-" if valid is None else f"{valid:.3f}"} | {done["controller"]["generations"]} | '
        f'{result["mean"]:.1f} +- {result["std"]:.1f} ({result["min"]:.1f}, '
        f'{result["max"]:.1f}; {result["episodes"]} episodes) |')
  return '\n'.join(lines)


@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  del argv  # parse() refused positional arguments
  if not flags.FLAGS.run_dir:
    raise UserError('--run_dir is required: round 0 runs there, round k in RUN/iterations/<k>')
  root, overrides = flags.FLAGS.run_dir, cli.overrides()
  settings = cli.resolve_config(root, overrides).iterate
  config = flags.FLAGS.config if flags.FLAGS['config'].present else None
  os.makedirs(root, exist_ok=True)
  if _AFTER_ROUND.value is not None:
    between_rounds(root, _AFTER_ROUND.value, settings)
    return
  with pipeline.run_lock(root):
    for k in range(settings.iterations + 1):
      run = runs.Run(root) if k == 0 else prepare(root, k, settings)
      print(f'== round {k} of {settings.iterations}: {run.root}', flush=True)
      code = run_round(run, k, config, overrides, flags.FLAGS.parallelism)
      if code:
        sys.exit(code)
  write_summary(root, settings.iterations)


def between_rounds(root: str, k: int, settings: config_lib.IterateConfig) -> None:
  """--after_round=K: the summary of the finished rounds, and round K+1 prepared if any."""
  if k > settings.iterations:
    raise UserError(f'--after_round={k}: iterate.iterations is {settings.iterations}, so the '
                    f'last round is {settings.iterations}')
  finished = runs.Run(round_dir(root, k))
  if not finished.is_done('evaluate'):
    raise UserError(f'--after_round={k}: round {k} ({finished.root}) has no finished evaluate stage; '
                    'run its stages first')
  with pipeline.run_lock(root):
    if k < settings.iterations:
      prepare(root, k + 1, settings)
    write_summary(root, settings.iterations)


def write_summary(root: str, rounds: int) -> None:
  table = summary(root, rounds)
  os.makedirs(os.path.join(root, FOLDER), exist_ok=True)
  fileio.write_text(os.path.join(root, FOLDER, SUMMARY), table + '\n')
  print(table, flush=True)


def parse(argv: list[str]) -> list[str]:
  return cli.parse_flags(argv, pipeline.KEY_FLAGS)
