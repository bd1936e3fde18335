"""The CMA-ES loop (the `cma` package): ask, evaluate, tell, save, every generation; resumable.

Resuming never unpickles anything. CMA-ES is deterministic given its seed and the fitness of
every generation: its normal samples come from a numpy Generator seeded from the experiment seed
(cma's `randn` option; the global numpy state is never used). So the saved state is just

    RUN/controller/es_state.npz   returns [G, P] of every generation so far, a digest of CMA's
                                  mean and sigma after each, the history columns, the search's
                                  settings, the best parameters' evaluation, and the first mean
                                  when it is not zeros (controller.start_from)
    RUN/controller/history.jsonl  one line per generation: generation, mode, best, mean, worst,
                                  sigma, the evaluations' means and stds (real and dream), and
                                  the seconds its fitness and evaluations took (COLUMNS;
                                  rewritten whole from the state)
    RUN/controller/best.npz       the best parameters (wm/agent.py format)

and a rerun rebuilds CMA-ES by replaying ask/tell with the saved returns, checking each
generation's digest (a different `cma` version or settings is refused, not silently diverged).
All three files are replaced atomically; es_state.npz is written last and is the truth.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import time
import zipfile
from typing import Callable

import cma
import numpy as np

from wm import artifacts
from wm.errors import ConfigError, DataError
from wm.infra import fileio

STATE, HISTORY = 'es_state.npz', 'history.jsonl'
BEST = artifacts.BEST  # the best parameters (RUN/controller/best.npz)
KEEP = ('real', 'dream', 'final', 'average', 'select')  # what best.npz can keep (Objective.keep)
COLUMNS = ('best', 'mean', 'worst', 'sigma',
           'std',  # the median over parameters of the search's std (sigma times each one's scale)
           'eval_mean', 'eval_std', 'centroid_eval_mean',
           'centroid_eval_std', 'dream_eval_mean', 'dream_eval_std', 'centroid_dream_eval_mean',
           'centroid_dream_eval_std',
           'dream_eval_episodes',  # dream episodes in each of those (controller.dream_eval_episodes)
           'dream_eval_score',  # keep=dream: what the choice ranks by (dream_score: with judges
           'centroid_dream_eval_score',  # and dream_fitness=worst, the worst M's mean)
           'select_score',  # keep=select: the centroid's score in the selection dream
           'fitness_s',  # wall seconds the generation's fitness took: the search's own cost
           'eval_s',  # ... and its evaluations (real and dream), a measurement, not training
           'select_s')  # ... and keep=select's play of the centroid in the selection dream
# Independent seed streams: CMA-ES sampling, training episodes, evaluations during training,
# and scripts/evaluate.py's episodes (never the same episodes as training); keep=select's dream
# episodes, the same at every generation so that centroids of any two are compared on them;
# scripts/rank_dream.py's dream episodes.
ES_STREAM, TRAIN_STREAM, EVAL_STREAM, TEST_STREAM = 101, 102, 103, 104
SELECT_STREAM, RANK_STREAM = 105, 106


def derive_seed(seed: int, stream: int, *keys: int) -> int:
  return int(np.random.SeedSequence([seed, stream, *keys]).generate_state(1)[0])


def episode_seeds(seed: int, stream: int, key: int, count: int) -> np.ndarray:
  return np.array([derive_seed(seed, stream, key, i) for i in range(count)], np.int64)


@dataclasses.dataclass(frozen=True)
class Settings:
  num_params: int  # length of the searched vector
  population_size: int  # candidates per generation
  init_sigma: float  # initial step size
  seed: int  # experiment seed
  rest: str = 'middle'  # controller.rest: under another, the same vector means other actions
  covariance: str = 'full'  # controller.covariance: full | diagonal (sep-CMA-ES)
  start: str = ''  # digest of the search's first mean (start_digest); '' for zeros
  min_sigma: float = 0.0  # controller.min_sigma: floor on each parameter's std (0: none)


def start_digest(start: np.ndarray | None) -> str:
  """What Settings.start records of a first mean: '' for zeros (None), else a hash."""
  if start is None:
    return ''
  return hashlib.sha256(np.asarray(start, np.float64).tobytes()).hexdigest()[:16]


class Search:
  """cma.CMAEvolutionStrategy from zeros (or `start`: controller.start_from), sampling from its own
  seeded Generator.

  With covariance=diagonal it is sep-CMA-ES (Ros & Hansen 2008, cma's CMA_diagonal): only the
  covariance's diagonal is learned, at a rate about n/3 times the full matrix's. At the paper's
  867 parameters and a population of 16, the full matrix's rank-mu rate is about 1e-5 per
  generation, so in a few hundred generations it stays isotropic; the diagonal can learn that
  some weights matter more than others.
  """

  def __init__(self, settings: Settings, start: np.ndarray | None = None):
    if start_digest(start) != settings.start:
      raise ValueError(f'the first mean {start_digest(start)!r} is not the one the settings '
                       f'record ({settings.start!r})')
    self.settings = settings
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, ES_STREAM]))
    options = {'popsize': settings.population_size, 'seed': np.nan, 'verbose': -9,
               'verb_disp': 0, 'verb_log': 0, 'randn': lambda *shape: rng.standard_normal(shape),
               'CMA_diagonal': settings.covariance == 'diagonal'}
    if settings.min_sigma > 0:  # cma raises a parameter's own scale when its std falls under
      options['minstd'] = settings.min_sigma
    first = np.zeros(settings.num_params) if start is None else np.asarray(start, np.float64)
    self.es = cma.CMAEvolutionStrategy(first, settings.init_sigma, options)

  def ask(self) -> np.ndarray:
    return np.asarray(self.es.ask(), np.float64)

  def tell(self, solutions: np.ndarray, returns: np.ndarray) -> None:
    self.es.tell(list(solutions), list(-np.asarray(returns, np.float64)))  # cma minimises

  @property
  def sigma(self) -> float:
    return float(self.es.sigma)

  @property
  def std(self) -> float:
    """The median over parameters of the search distribution's std: sigma alone is not the step
    once min_sigma has raised some parameters' scales (or the diagonal has learned them)."""
    return float(np.median(self.es.stds))

  @property
  def centroid(self) -> np.ndarray:
    """The mean of the search distribution: what CMA-ES currently believes is best."""
    return np.asarray(self.es.mean, np.float64).copy()

  def digest(self) -> np.ndarray:
    data = np.asarray(self.es.mean, np.float64).tobytes() + np.float64(self.es.sigma).tobytes()
    return np.frombuffer(hashlib.sha256(data).digest()[:8], np.uint8).copy()


@dataclasses.dataclass
class State:
  """Everything a rerun needs, as plain arrays."""
  settings: Settings
  returns: np.ndarray  # [G, P] fitness of every candidate of every generation
  digests: np.ndarray  # [G, 8] uint8 digest of CMA's mean and sigma after generation g
  columns: dict[str, np.ndarray]  # COLUMNS -> [G]
  modes: list[str]  # where generation g was evaluated: real | dream
  best_score: float = -np.inf  # score of best.npz: its eval mean (once any), else its fitness
  best_evaluated: bool = False  # best.npz was chosen by a real evaluation (fitness no longer counts)
  start: np.ndarray | None = None  # the search's first mean (None: zeros)

  @property
  def generation(self) -> int:
    return len(self.returns)

  @classmethod
  def empty(cls, settings: Settings, start: np.ndarray | None = None) -> 'State':
    return cls(settings, np.zeros((0, settings.population_size)), np.zeros((0, 8), np.uint8),
               {c: np.zeros(0) for c in COLUMNS}, [], start=start)

  def append(self, returns: np.ndarray, digest: np.ndarray, mode: str, **row: float) -> None:
    self.returns = np.concatenate([self.returns, np.asarray(returns)[None]])
    self.digests = np.concatenate([self.digests, digest[None]])
    for c in COLUMNS:
      self.columns[c] = np.append(self.columns[c], row.get(c, np.nan))
    self.modes.append(mode)

  def rows(self) -> list[dict]:
    return [{'generation': g + 1, 'mode': self.modes[g],
             **{c: _json_float(self.columns[c][g]) for c in COLUMNS}}
            for g in range(self.generation)]


def _column(data, name: str, generations: int) -> np.ndarray:
  key = f'column_{name}'
  return data[key] if key in data.files else np.full(generations, np.nan)  # added later: unknown


def _json_float(x: float) -> float | None:
  return None if not np.isfinite(x) else float(x)


def save(folder: str, state: State) -> None:
  fileio.write_text(os.path.join(folder, HISTORY),
                    ''.join(json.dumps(row) + '\n' for row in state.rows()))
  with fileio.atomic_path(os.path.join(folder, STATE)) as tmp, open(tmp, 'wb') as f:
    np.savez(f, returns=state.returns, digests=state.digests, modes=np.array(state.modes, str),
             best_score=np.float64(state.best_score),
             best_evaluated=np.bool_(state.best_evaluated),
             settings=np.array(json.dumps(dataclasses.asdict(state.settings))),
             **{f'column_{c}': v for c, v in state.columns.items()},
             **({} if state.start is None else {'start': state.start}))


def copy_without_best(source: str, target: str) -> None:
  """Writes the search state of folder `source` into folder `target` (atomically) with its best
  forgotten: no best score, so the next generations choose a best anew (best.npz is not copied).
  For a search continued through other V and M (the iterative training's rounds), where the old
  best's parameters mean something else."""
  with np.load(os.path.join(source, STATE), allow_pickle=False) as data:
    arrays = {name: data[name] for name in data.files}
  arrays.update(best_score=np.float64(-np.inf), best_evaluated=np.bool_(False))
  with fileio.atomic_path(os.path.join(target, STATE)) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **arrays)


def load(folder: str, settings: Settings, start: np.ndarray | None = None) -> State:
  """The saved state (or an empty one from `start`), checked against `settings`."""
  path = os.path.join(folder, STATE)
  if not os.path.exists(path):
    return State.empty(settings, start)
  try:
    with np.load(path, allow_pickle=False) as data:
      saved = Settings(**json.loads(str(data['settings'])))
      state = State(saved, data['returns'], data['digests'],
                    {c: _column(data, c, len(data['returns'])) for c in COLUMNS},
                    [str(m) for m in data['modes']], float(data['best_score']),
                    bool(data['best_evaluated']),
                    data['start'] if 'start' in data.files else None)
  except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, TypeError) as e:
    raise DataError(f'{path} is truncated or corrupted ({type(e).__name__}: {e}); move it away '
                    'to start the search again') from None
  if start_digest(state.start) != saved.start:
    raise DataError(f'{path}: its first mean does not match the digest its settings record '
                    f'({saved.start!r}); move it away to start the search again')
  if saved != settings:
    raise ConfigError(f'{path} holds a search with {saved}, the config asks for {settings}: '
                      'restore the config (controller.*, seed) or use another run dir')
  return state


def replay(state: State, centroids: collections.deque | None = None) -> Search:
  """Rebuilds CMA-ES after state.generation generations, checking every digest; appends each
  generation's centroid to `centroids` when given."""
  search = Search(state.settings, state.start)
  for g in range(state.generation):
    search.tell(search.ask(), state.returns[g])
    if centroids is not None:
      centroids.append(search.centroid)
    if not np.array_equal(search.digest(), state.digests[g]):
      raise DataError(f'replaying the saved CMA-ES state diverged at generation {g + 1}: the '
                      '`cma` version or its options differ from the run that wrote it')
  return search


@dataclasses.dataclass
class Generation:
  """What the loop reports after each generation."""
  generation: int
  row: dict[str, float]
  best_params: np.ndarray


@dataclasses.dataclass
class Objective:
  """What the search asks of its caller."""
  fitness: Callable[[np.ndarray, int], np.ndarray]  # (params [P, n], generation) -> returns [P]
  save_best: Callable[[np.ndarray, float], None]  # (params [n], score): keep the best so far
  # (params [k, n], generation) -> returns [k, E] of the same E real evaluation episodes per row
  evaluate: Callable[[np.ndarray, int], np.ndarray] | None = None
  eval_every: int = 1  # generations between evaluations
  stop: Callable[[], bool] = lambda: False  # checked after each generation is saved
  # the same as `evaluate` inside M's dream: logged beside the real returns (dream fidelity)
  dream_evaluate: Callable[[np.ndarray, int], np.ndarray] | None = None
  # returns [k, E] of dream_evaluate -> scores [k] that keep='dream' ranks by (default: means)
  dream_score: Callable[[np.ndarray], np.ndarray] = lambda returns: returns.mean(axis=1)
  # which evaluation chooses best.npz: real | dream (needs dream_evaluate) | final (none: the
  # centroid of the newest evaluation, whatever either world scored) | average (none: the mean of
  # the centroids of the last `average` generations, saved after every generation) | select (the
  # centroid `select` scores best, every `select_every` generations and at the last)
  keep: str = 'real'
  average: int = 1  # keep=average: how many of the newest generations' centroids
  select: Callable[[np.ndarray], float] | None = None  # keep=select: centroid [n] -> its score
  select_every: int = 1  # keep=select: generations between two plays of the centroid

  def __post_init__(self):
    if self.keep not in KEEP:
      raise ValueError(f'keep must be one of {KEEP}, not {self.keep!r}')
    if self.average < 1:
      raise ValueError(f'average must be >= 1, not {self.average}')
    if self.keep == 'dream' and self.dream_evaluate is None:
      raise ValueError("keep='dream' chooses by the dream's evaluations: give dream_evaluate")
    if self.keep == 'select' and (self.select is None or self.select_every < 1):
      raise ValueError("keep='select' chooses by select's scores: give select, select_every >= 1")


def run(folder: str, state: State, generations: int, mode: str | Callable[[int], str],
        objective: Objective):
  """Runs generations state.generation+1 .. `generations`, saving after each; yields them.
  `mode` (real | dream, or a function of the generation giving it) is recorded per generation.

  Every `objective.eval_every` generations the generation's best candidate and the search's
  centroid are evaluated (in the real environment, and with `dream_evaluate` in the dream too),
  and best.npz keeps whichever evaluated best so far, in the real environment or, with
  objective.keep == 'dream', in the dream; with objective.keep == 'final' it keeps the newest
  evaluation's centroid, chosen by neither world; with objective.keep == 'average', after
  every generation, the mean of the newest objective.average generations' centroids: once the
  search has converged its mean wanders with the noise of its fitness, and the average of its
  last steps sits nearer their middle; with objective.keep == 'select', the centroid that
  objective.select scored best of those it played, every objective.select_every generations and
  at the last: a judge other than the fitness that drove the walk, which can see where the walk
  went past its best. Stops early (after saving) when objective.stop() is true.
  """
  centroids = collections.deque(maxlen=objective.average)
  search = replay(state, centroids)
  while state.generation < generations:
    g = state.generation + 1
    solutions = search.ask()
    start = time.perf_counter()
    returns = np.asarray(objective.fitness(solutions, g), np.float64)
    search.tell(solutions, returns)
    centroids.append(search.centroid)
    top = int(np.argmax(returns))
    row = {'best': returns[top], 'mean': returns.mean(), 'worst': returns.min(),
           'sigma': search.sigma, 'std': search.std, 'fitness_s': time.perf_counter() - start}
    best, score, evaluated = solutions[top], returns[top], False
    if objective.evaluate is not None and g % objective.eval_every == 0:
      start = time.perf_counter()
      best, score = _evaluate(objective, g, best, search.centroid, row)
      row['eval_s'] = time.perf_counter() - start
      evaluated = True
    if objective.keep == 'average':  # scored by its population's mean fitness, no evaluation
      objective.save_best(np.mean(centroids, axis=0), float(returns.mean()))
      state.best_score, state.best_evaluated = float(returns.mean()), evaluated
    elif objective.keep == 'select':
      if g % objective.select_every == 0 or g == generations:
        start = time.perf_counter()
        row['select_score'] = float(objective.select(search.centroid))
        row['select_s'] = time.perf_counter() - start
        if not state.best_evaluated or row['select_score'] > state.best_score:
          objective.save_best(search.centroid, row['select_score'])
          state.best_score, state.best_evaluated = row['select_score'], True
    elif (evaluated and (objective.keep == 'final' or not state.best_evaluated)) or (
        evaluated == state.best_evaluated and score > state.best_score):
      objective.save_best(best, float(score))
      state.best_score, state.best_evaluated = float(score), evaluated
    state.append(returns, search.digest(), mode(g) if callable(mode) else mode, **row)
    save(folder, state)
    yield Generation(g, row, solutions[top])
    if objective.stop():
      return


def _evaluate(objective: Objective, generation: int, best: np.ndarray, centroid: np.ndarray,
              row: dict) -> tuple[np.ndarray, float]:
  """Plays the best candidate and the centroid on the same episodes; returns the better (by
  `objective.keep`'s evaluation; keep=final: the centroid, scored as keep=dream would with a
  dream, else by the game) and its score there, and adds both evaluations to `row`."""
  pair = np.stack([best, centroid])
  episodes = np.asarray(objective.evaluate(pair, generation))
  row.update(eval_mean=episodes[0].mean(), eval_std=episodes[0].std(),
             centroid_eval_mean=episodes[1].mean(), centroid_eval_std=episodes[1].std())
  scores = episodes.mean(axis=1)
  if objective.dream_evaluate is not None:  # the dream's fidelity: the same two, inside M
    dreamt = np.asarray(objective.dream_evaluate(pair, generation))
    row.update(dream_eval_mean=dreamt[0].mean(), dream_eval_std=dreamt[0].std(),
               centroid_dream_eval_mean=dreamt[1].mean(),
               centroid_dream_eval_std=dreamt[1].std(), dream_eval_episodes=dreamt.shape[1])
    if objective.keep in ('dream', 'final'):  # the search's own rule (judges: the worst M's mean)
      scores = np.asarray(objective.dream_score(dreamt), np.float64)
      row.update(dream_eval_score=scores[0], centroid_dream_eval_score=scores[1])
  if scores[1] > scores[0] or objective.keep == 'final':
    return centroid, scores[1]
  return best, scores[0]
