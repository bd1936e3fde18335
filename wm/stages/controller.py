"""Stage controller: CMA-ES evolving the controller, in M's dream or in the real environment.

`run` starts on every MPI rank: rank 0 owns the search (wm/es.py) and the others serve its real
episodes; without MPI, local worker processes do (wm/evaluation.py). Fitness comes from the dream
(controller.mode=dream, wm/dream.py) or from real training episodes (mode=real). A real search
starts from zeros, or warm from a controller evolved in the dream on the same V and M:
controller.warm_generations runs a dream search of its own first (its own population and trials,
RUN/controller/warm), controller.start_from takes another run's, and controller.dream_generations
plays the search's own first generations in the dream. Every evaluation plays the best candidate
and the centroid in both, logging the dream's fidelity beside the real returns. With
controller.keep=select a second dream, ended by its own rule (controller.select_done), plays the
centroid every controller.select_every generations and keeps the best it saw.
Inputs, outputs and flags: scripts/train_controller.py.
"""

from __future__ import annotations

import copy
import os

import numpy as np
from absl import logging

from wm import artifacts, es, evaluation, hardware, training
from wm.agent import WorldModel, action_space_of
from wm.artifacts import save_params
from wm.config import Config
from wm.dream import Dream
from wm.errors import UserError
from wm.infra import cli, mpi, runs
from wm.infra.progress import Progress


def run(stage: cli.Stage, parallelism: int = 1) -> None:
  """The stage, on every MPI rank: rank 0 runs the search, the others serve its episodes."""
  if parallelism < 1:
    raise UserError(f'--parallelism must be >= 1, got {parallelism}')
  world = mpi.world()
  if not world.root:
    if world.comm is not None:
      evaluation.serve(world.comm, stage.config, stage.run.root)
    return
  evaluator = (evaluation.Mpi(world.comm, stage.config, stage.run.root)
               if world.comm is not None and world.size > 1 else None)
  try:
    train(stage, evaluator, parallelism)
  finally:
    if evaluator is not None:
      evaluator.close()


def search_settings(config: Config, model: WorldModel,
                    start: np.ndarray | None = None) -> es.Settings:
  """The CMA-ES search's settings: what a saved search state must match."""
  c = config.controller
  sigma = c.init_sigma if start is None else c.start_sigma
  return es.Settings(model.controller.num_params, c.population_size, sigma, config.seed,
                     c.rest, c.covariance, es.start_digest(start),
                     min_sigma=c.min_sigma)


def warm_config(config: Config) -> Config:
  """The warm start's search (controller.warm_*): in the dream, with its own population, trials
  and choice of what to keep, from zeros."""
  warm = copy.deepcopy(config)
  c = warm.controller
  c.mode, c.population_size, c.trials = 'dream', c.warm_population, c.warm_trials
  c.generations, c.keep = c.warm_generations, c.warm_keep
  c.warm_generations, c.dream_generations, c.start_from = 0, 0, ''
  return warm


def warm_start(stage: cli.Stage, model: WorldModel, mpi_evaluator, parallelism: int) -> runs.Run:
  """Runs (or, on a rerun, finishes or skips) the dream search a warm real search starts
  from, in RUN/controller/warm, through the same V and M; returns the run whose best.npz it
  kept."""
  run = stage.run.redirected('controller', os.path.join(stage.dir, runs.WARM))
  logging.info('warm start: %d generations in the dream first (controller.warm_generations), '
               'in %s', stage.config.controller.warm_generations, run.stage_dir('controller'))
  train(cli.Stage(stage.name, warm_config(stage.config), run, stage.overrides), mpi_evaluator,
        parallelism, model)
  return run


def start_params(run: runs.Run, config: Config, model: WorldModel,
                 warm: runs.Run | None = None) -> np.ndarray | None:
  """The search's first mean: the warm search's controller, or controller.start_from's (None:
  zeros), whose run must share this run's V and M (artifacts.require_start_run)."""
  if warm is not None:
    return artifacts.load_params(artifacts.controller_params_path(warm),
                                 model.controller).astype(np.float64)
  source = config.controller.start_from
  if not source:
    return None
  other = artifacts.require_start_run(run, source)
  params = artifacts.load_params(artifacts.controller_params_path(other), model.controller)
  logging.info('search starts from %s (controller.start_from)',
               artifacts.controller_params_path(other))
  return params.astype(np.float64)


def dream_of(run: runs.Run, config: Config, model: WorldModel) -> Dream:
  """The run's dream as its search plays it: controller.dream_* settings, judges, dropout."""
  c = config.controller
  return Dream.load(model, run, config.env.agent_steps(), c.dream_temperature,
                    done_rule=c.dream_done, done_odds=c.dream_done_odds,
                    checkpoints=c.judge_steps(), judge_runs=c.judge_runs(),
                    seq_judges=config.seq.judges, fitness=c.dream_fitness,
                    precision=hardware.precision(c.dream_precision),
                    dropout=config.seq.dropout if c.dream_dropout else 0.0,
                    common=c.dream_common, done_from=c.dream_done_from)


class Episodes:
  """Where the search's candidates play: M's dream (controller.mode=dream) for fitness, and the
  real environment (local workers, or the MPI ranks) for real-mode fitness and evaluations."""

  def __init__(self, stage: cli.Stage, model: WorldModel, mpi_evaluator, parallelism: int):
    self.stage, self.config, self.c = stage, stage.config, stage.config.controller
    self.mpi_evaluator, self.parallelism = mpi_evaluator, parallelism
    self.local = None  # made on first use: a dream-only search never starts the workers
    # The dream: fitness in dream mode, and in both modes the dream half of every evaluation.
    self.dream = dream_of(stage.run, self.config, model)
    logging.info('dream: M computes in %s (controller.dream_precision=%s: %s)',
                 self.dream.precision, self.c.dream_precision, hardware.native_bfloat16()[1])
    # keep=select: the dream that chooses best.npz among the centroids, ended by its own rule
    self.selection = (self.dream.with_ends(self.c.select_done, self.c.select_done_odds)
                      if self.c.keep == 'select' else None)

  def real(self) -> evaluation.Evaluator:
    if self.mpi_evaluator is not None:
      return self.mpi_evaluator
    if self.local is None:
      self.local = evaluation.make(self.config, self.stage.run.root, self.parallelism)
    return self.local

  def play(self, params: np.ndarray, seeds: np.ndarray, patience: int = 0) -> np.ndarray:
    """Returns [P, E]: every row of params [P, n] on every one of the E episode seeds."""
    returns = self.real().evaluate(np.repeat(params, len(seeds), axis=0),
                                   np.tile(seeds, len(params)), patience)
    return returns.reshape(len(params), len(seeds))

  def mode(self, generation: int) -> str:
    """Where generation `generation` (1-based) evolves: controller.mode, but in the dream for a
    real-mode search's first controller.dream_generations."""
    return 'dream' if generation <= self.c.dream_generations else self.c.mode

  def fitness(self, params: np.ndarray, generation: int) -> np.ndarray:
    seed = self.config.seed
    if self.mode(generation) == 'dream':
      return self.dream.evaluate(params, self.c.trials,
                                 es.derive_seed(seed, es.TRAIN_STREAM, generation))
    seeds = es.episode_seeds(seed, es.TRAIN_STREAM, generation, self.c.trials)
    return self.play(params, seeds, self.c.train_patience).mean(axis=1)

  def evaluate(self, params: np.ndarray, generation: int) -> np.ndarray:
    return self.play(params, es.episode_seeds(self.config.seed, es.EVAL_STREAM, generation,
                                              self.c.eval_episodes))

  def dream_evaluate(self, params: np.ndarray, generation: int) -> np.ndarray:
    """The evaluation's twin inside M: dream episodes [P, E] (controller.dream_eval_episodes,
    by default as many as the real ones), their own seeds."""
    return self.dream.episodes(params, self.c.dream_eval_count(),
                               es.derive_seed(self.config.seed, es.EVAL_STREAM, generation))

  def select(self, centroid: np.ndarray) -> float:
    """keep=select: the centroid's score (the search's rule: with judges and
    dream_fitness=worst, its worst M's mean) over controller.select_episodes in the selection
    dream, the same episodes at every generation."""
    seed = es.derive_seed(self.config.seed, es.SELECT_STREAM)
    return float(self.selection.evaluate(centroid[None], self.c.select_episodes, seed)[0])

  def close(self) -> None:
    if self.local is not None:
      self.local.close()


def train(stage: cli.Stage, mpi_evaluator, parallelism: int = 1,
          model: WorldModel | None = None) -> None:
  """Continues the search up to controller.generations; DONE when there, exit 75 when stopped.
  `model`: the run's V, M and C when loaded already (the warm start's search shares them)."""
  config, c = stage.config, stage.config.controller
  model = model or WorldModel.load(stage.run, config, action_space_of(config))
  warm = warm_start(stage, model, mpi_evaluator, parallelism) if c.warm_generations else None
  start = start_params(stage.run, config, model, warm)
  settings = search_settings(config, model, start)
  state = es.load(stage.dir, settings, start)
  if state.generation >= c.generations:
    logging.info('%d of %d generations done already', state.generation, c.generations)
    stage.run.mark_done('controller', generations=state.generation)
    return
  stage.run.clear_done('controller')
  episodes = Episodes(stage, model, mpi_evaluator, parallelism)
  origin = warm.stage_dir('controller') if warm else c.start_from
  how = (f' after {c.dream_generations} generations in the dream' if c.dream_generations
         else '') + (f', starting at {origin}\'s controller' if origin else '')
  logging.info('CMA-ES over %d parameters (controller.inputs=%s), population %d, %d trials, '
               '%s mode%s; generation %d next', settings.num_params, c.inputs, c.population_size,
               c.trials, c.mode, how, state.generation + 1)
  try:
    search(stage, model, state, episodes)
  finally:
    episodes.close()
  if state.generation < c.generations:
    training.exit_for_requeue(f'generation {state.generation} in {stage.dir}')
  stage.run.mark_done('controller', generations=state.generation, best_score=state.best_score)


def search(stage: cli.Stage, model: WorldModel, state: es.State, episodes: Episodes) -> None:
  """The CMA-ES loop, logged to TensorBoard, until done or preempted (then saved)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  c = stage.config.controller

  def save_best(params: np.ndarray, score: float) -> None:
    save_params(artifacts.controller_params_path(stage.run), params, model.controller,
                score=score)

  writer = tf.summary.create_file_writer(os.path.join(stage.dir, 'tb'))
  progress = Progress('controller generations', c.generations, folder=stage.dir,
                      start=state.generation)
  with training.Preemption() as preemption:
    objective = es.Objective(episodes.fitness, save_best, episodes.evaluate, c.eval_every,
                             stop=lambda: preemption.requested,
                             dream_evaluate=episodes.dream_evaluate,
                             dream_score=episodes.dream.score, keep=c.keep,
                             average=c.keep_average, select=episodes.select,
                             select_every=c.select_every)
    for gen in es.run(stage.dir, state, c.generations, episodes.mode, objective):
      log(writer, gen)
      progress.update(gen.generation)


def log(writer, gen: es.Generation) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  row = gen.row
  text = ', '.join(f'{k} {v:.2f}' for k, v in row.items())
  logging.info('generation %d: %s', gen.generation, text)
  with writer.as_default(step=gen.generation):
    for key in ('best', 'mean', 'worst', 'sigma', 'std'):
      tf.summary.scalar(f'es/{key}', row[key])
    if 'eval_mean' in row:
      tf.summary.scalar('eval/return_mean', row['eval_mean'])
      tf.summary.scalar('eval/return_std', row['eval_std'])
      tf.summary.scalar('eval/centroid_return_mean', row['centroid_eval_mean'])
      tf.summary.scalar('eval/centroid_return_std', row['centroid_eval_std'])
    if 'dream_eval_mean' in row:  # dream fidelity: a positive gap is a dream easier than reality
      tf.summary.scalar('eval/dream_return_mean', row['dream_eval_mean'])
      tf.summary.scalar('eval/dream_gap', row['dream_eval_mean'] - row['eval_mean'])
    if 'select_score' in row:
      tf.summary.scalar('select/centroid_score', row['select_score'])
  writer.flush()
