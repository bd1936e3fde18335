"""CMA-ES: it finds a known controller, resumes exactly, and the stage script survives a kill,
switches from the dream to the real environment, and gives the same result under MPI.

V and M of the script runs are randomly initialised real ConvVAE and MDNRNN (debug sizes).
"""

import collections
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import gymnasium as gym
import numpy as np
import pytest

from conftest import DEBUG, REPO, copy_run, run_script, script_env
from wm import config as config_lib
from wm import es
from wm.config import Config
from wm.errors import ConfigError, DataError
from wm.models.controller import Controller
from wm.stages import controller as controller_stage


def test_cma_es_finds_a_known_controller(tmp_path):
  """Imitation of a known linear controller: the optimum is its parameters (fitness 0)."""
  space = gym.spaces.Box(-1, 1, (2,), np.float32)
  c = Controller('z', 3, 0, space)
  rng = np.random.default_rng(0)
  target = rng.normal(size=c.num_params)
  z = rng.normal(size=(64, 3))
  wanted = np.tanh(z @ c.unflatten(target)['w0'] + c.unflatten(target)['b0'])

  def fitness(params, generation):
    batch = np.repeat(params, len(z), axis=0)
    actions = c(batch, np.tile(z, (len(params), 1)), None).numpy()
    return -((actions.reshape(len(params), len(z), 2) - wanted) ** 2).mean(axis=(1, 2))

  state = es.State.empty(es.Settings(c.num_params, 12, 0.5, seed=1))
  list(es.run(str(tmp_path), state, 120, 'real', es.Objective(fitness, _ignore)))
  best = es.replay(state).es.mean
  assert state.columns['best'][-1] > -1e-4, state.columns['best'][-5:]
  np.testing.assert_allclose(best, target, atol=0.05)


def _ignore(params, score):
  del params, score  # best.npz is not under test here


def _quadratic(params, generation):
  return -np.sum((params - 0.3) ** 2, axis=1) + 0.01 * generation


@pytest.mark.parametrize('covariance', ['full', 'diagonal'])
def test_resume_continues_exactly(tmp_path, covariance):
  settings = es.Settings(20, 8, 0.2, seed=3, covariance=covariance)
  whole = es.State.empty(settings)
  list(es.run(str(tmp_path / 'a'), whole, 6, 'dream', es.Objective(_quadratic, _ignore)))
  calls = []
  part = es.State.empty(settings)
  stop_after_two = lambda: len(calls) >= 2  # noqa: E731
  for gen in es.run(str(tmp_path / 'b'), part, 6, 'dream',
                    es.Objective(_quadratic, _ignore, stop=stop_after_two)):
    calls.append(gen.generation)
  assert calls == [1, 2]
  resumed = es.load(str(tmp_path / 'b'), settings)
  list(es.run(str(tmp_path / 'b'), resumed, 6, 'real', es.Objective(_quadratic, _ignore)))
  np.testing.assert_array_equal(resumed.returns, whole.returns)
  rows = [json.loads(line) for line in open(tmp_path / 'b' / es.HISTORY)]
  assert [r['generation'] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert [r['mode'] for r in rows] == ['dream'] * 2 + ['real'] * 4


def test_a_copy_without_best_continues_the_search_and_chooses_a_best_anew(tmp_path):
  """The iterative training's rounds: the search goes on, the old best (scored through other V
  and M) does not count."""
  settings = es.Settings(6, 8, 0.3, seed=2)
  state, saved = es.State.empty(settings), []
  list(es.run(str(tmp_path / 'a'), state, 3, 'real', es.Objective(_quadratic, _ignore)))
  assert state.best_score > -np.inf
  os.makedirs(tmp_path / 'b')
  es.copy_without_best(str(tmp_path / 'a'), str(tmp_path / 'b'))
  copied = es.load(str(tmp_path / 'b'), settings)
  np.testing.assert_array_equal(copied.returns, state.returns)
  assert (copied.best_score, copied.best_evaluated) == (-np.inf, False)
  worse = lambda p, g: _quadratic(p, g) - 1e6  # noqa: E731  (far below the old best)
  list(es.run(str(tmp_path / 'b'), copied, 4, 'real',
              es.Objective(worse, lambda p, s: saved.append(s))))
  assert saved and saved[-1] < state.best_score  # chosen anew, though worse than the old


def test_evaluations_keep_the_better_of_best_candidate_and_centroid(tmp_path):
  # Every second generation both are played on the same episodes; best.npz gets the better.
  settings = es.Settings(6, 8, 0.3, seed=2)
  state = es.State.empty(settings)
  saved, played = [], []

  def evaluate(params, generation):
    played.append(params)
    # The centroid (row 1) wins at generation 2, the best candidate (row 0) at generation 4.
    scores = [1.0, 5.0] if generation == 2 else [9.0, 2.0]
    return np.array([[s, s + 2.0] for s in scores])

  gens = list(es.run(str(tmp_path), state, 4, 'real', es.Objective(
      _quadratic, lambda p, s: saved.append((p.copy(), s)), evaluate, eval_every=2)))
  assert [p.shape for p in played] == [(2, 6), (2, 6)]
  centroid_after_2 = es.replay(es.State(settings, state.returns[:2], state.digests[:2],
                                        {c: v[:2] for c, v in state.columns.items()},
                                        state.modes[:2])).centroid
  np.testing.assert_allclose(played[0][1], centroid_after_2)
  # Before any evaluation the fittest is kept; at 2 the centroid (6.0) beats the best (2.0);
  # at 4 the best candidate (10.0) beats both.
  assert [s for _, s in saved][-2:] == [6.0, 10.0]
  np.testing.assert_allclose(saved[-2][0], centroid_after_2)
  np.testing.assert_allclose(saved[-1][0], gens[-1].best_params)
  assert state.columns['centroid_eval_mean'][1] == 6.0 and state.columns['eval_mean'][3] == 10.0
  assert np.isnan(state.columns['centroid_eval_mean'][0])


def test_evaluations_also_log_the_dream_beside_the_real_game(tmp_path):
  settings = es.Settings(3, 4, 0.5, seed=0)
  state = es.State.empty(settings)
  real = lambda p, g: np.tile(p.sum(axis=1, keepdims=True), (1, 5))  # noqa: E731
  dream = lambda p, g: real(p, g) + 7.0  # a dream 7 points easier than the game  # noqa: E731
  list(es.run(str(tmp_path), state, 2, 'real', es.Objective(
      _quadratic, _ignore, real, eval_every=2, dream_evaluate=dream)))
  gap = state.columns['dream_eval_mean'][1] - state.columns['eval_mean'][1]
  centroid_gap = state.columns['centroid_dream_eval_mean'][1] - state.columns['centroid_eval_mean'][1]
  assert gap == pytest.approx(7.0) and centroid_gap == pytest.approx(7.0)
  assert np.isnan(state.columns['dream_eval_mean'][0])  # not an evaluation generation


@pytest.mark.parametrize('keep', ['real', 'dream'])
def test_keep_dream_chooses_by_the_dream_and_never_by_the_game(tmp_path, keep):
  # The game prefers the centroid (row 1), the dream the best candidate (row 0): with
  # controller.keep=dream best.npz is the dream's choice, scored by its dream evaluation.
  settings = es.Settings(3, 4, 0.5, seed=0)
  state = es.State.empty(settings)
  saved = []
  real = lambda p, g: np.array([[1.0] * 4, [3.0] * 4])  # noqa: E731
  dream = lambda p, g: np.array([[8.0] * 4, [6.0] * 4])  # noqa: E731
  gens = list(es.run(str(tmp_path), state, 2, 'dream', es.Objective(
      _quadratic, lambda p, s: saved.append((p.copy(), s)), real, eval_every=2,
      dream_evaluate=dream, keep=keep)))
  params, score = saved[-1]
  assert score == (8.0 if keep == 'dream' else 3.0)
  chose_best = np.allclose(params, gens[-1].best_params)
  assert chose_best == (keep == 'dream')


def test_keep_final_keeps_the_newest_centroid_whatever_either_world_scored(tmp_path):
  # Both worlds score the centroid worse at generation 4 than at 2, and the best candidate
  # higher still: keep=final saves the newest centroid anyway, scored by its dream evaluation.
  state = es.State.empty(es.Settings(3, 4, 0.5, seed=0))
  saved, centroids = [], []
  real = lambda p, g: np.array([[9.0] * 4, [5.0 - g] * 4])  # noqa: E731
  dream = lambda p, g: (centroids.append(p[1].copy()),  # noqa: E731
                        np.array([[9.0] * 4, [5.0 - g] * 4]))[1]
  list(es.run(str(tmp_path), state, 4, 'dream', es.Objective(
      _quadratic, lambda p, s: saved.append((p.copy(), s)), real, eval_every=2,
      dream_evaluate=dream, keep='final')))
  params, score = saved[-1]
  assert len(centroids) == 2 and not np.allclose(centroids[0], centroids[1])
  np.testing.assert_array_equal(params, centroids[1])
  assert score == 1.0 and state.best_score == 1.0 and state.best_evaluated


def test_keep_average_keeps_the_mean_of_the_newest_centroids_across_a_resume(tmp_path):
  """keep=average: after every generation best.npz is the mean of the newest `average`
  generations' centroids, scored by the generation's population mean; a search stopped and
  resumed (the window rebuilt by replay) saves the same as one run without a break."""
  settings = es.Settings(5, 6, 0.3, seed=4)
  objective = lambda saved: es.Objective(  # noqa: E731
      _quadratic, lambda p, s: saved.append((p.copy(), s)), keep='average', average=3)
  whole, saved = es.State.empty(settings), []
  list(es.run(str(tmp_path / 'whole'), whole, 6, 'real', objective(saved)))
  search, centroids = es.Search(settings), []
  for g in range(6):  # the same search by hand: its centroid after each generation
    search.tell(search.ask(), whole.returns[g])
    centroids.append(search.centroid)
  np.testing.assert_allclose(saved[-1][0], np.mean(centroids[3:], axis=0))
  np.testing.assert_allclose(saved[1][0], np.mean(centroids[:2], axis=0))  # fewer at first
  assert saved[-1][1] == pytest.approx(whole.returns[5].mean()) == whole.best_score
  assert not np.allclose(saved[-1][0], centroids[-1])  # not the newest centroid alone

  folder, first = str(tmp_path / 'split'), []
  list(es.run(folder, es.State.empty(settings), 4, 'real', objective(first)))
  resumed = []
  list(es.run(folder, es.load(folder, settings), 6, 'real', objective(resumed)))
  np.testing.assert_array_equal(resumed[-1][0], saved[-1][0])
  with pytest.raises(ValueError, match='average'):
    es.Objective(_quadratic, _ignore, keep='average', average=0)


def test_keep_dream_ranks_by_the_searchs_own_dream_score(tmp_path):
  # With judges and dream_fitness=worst the search ranks candidates by their worst M's mean; the
  # dream's choice of best.npz must too. Row 0 lives long in one world and dies in the other
  # (mean 5, worst 0), row 1 lives as long in both (4): the worst-world score keeps row 1.
  state = es.State.empty(es.Settings(3, 4, 0.5, seed=0))
  saved = []
  dream = lambda p, g: np.array([[10.0, 10.0, 0.0, 0.0], [4.0] * 4])  # noqa: E731
  worst = lambda returns: returns.reshape(len(returns), 2, -1).mean(axis=2).min(axis=1)  # noqa: E731
  gens = list(es.run(str(tmp_path), state, 2, 'dream', es.Objective(
      _quadratic, lambda p, s: saved.append((p.copy(), s)), lambda p, g: np.ones((2, 4)),
      eval_every=2, dream_evaluate=dream, dream_score=worst, keep='dream')))
  params, score = saved[-1]
  assert score == 4.0 and not np.allclose(params, gens[-1].best_params)
  assert state.columns['dream_eval_score'][1] == 0.0
  assert state.columns['centroid_dream_eval_score'][1] == 4.0
  assert state.columns['dream_eval_mean'][1] == 5.0  # fidelity still logs every episode's mean


def test_keep_select_keeps_the_centroid_the_selection_scores_best_across_a_resume(tmp_path):
  """keep=select: every select_every generations and at the last the centroid is scored by
  `select` alone (neither the fitness nor the evaluations choose), best.npz keeps the best
  scored so far, and a search stopped and resumed keeps comparing against it."""
  settings = es.Settings(3, 4, 0.5, seed=1)
  scores, played, saved = iter([1.0, 3.0, 2.0, 4.0]), [], []  # in the order centroids play

  def select(centroid):
    played.append(centroid.copy())
    return next(scores)

  objective = es.Objective(_quadratic, lambda p, s: saved.append((p.copy(), s)),
                           lambda p, g: np.full((2, 4), 99.0), eval_every=1, keep='select',
                           select=select, select_every=2)
  folder = str(tmp_path / 'search')
  gens = list(es.run(folder, es.State.empty(settings), 3, 'dream', objective))
  assert len(played) == 2  # generation 2, and 3: the last
  assert [s for _, s in saved] == [1.0, 3.0] and es.load(folder, settings).best_score == 3.0
  np.testing.assert_array_equal(saved[-1][0], played[1])
  assert not np.allclose(saved[-1][0], gens[-1].best_params)  # the centroid, not the best

  state = es.load(folder, settings)  # resumed: generation 4 scores 2.0, 5 (the last) 4.0
  list(es.run(folder, state, 5, 'dream', objective))
  assert [s for _, s in saved] == [1.0, 3.0, 4.0] and state.best_score == 4.0
  np.testing.assert_array_equal(saved[-1][0], played[3])
  rows = state.rows()
  assert [r['select_score'] for r in rows] == [None, 1.0, 3.0, 2.0, 4.0]
  assert all(r['select_s'] >= 0 for r in rows if r['select_score'] is not None)
  with pytest.raises(ValueError, match='select'):
    es.Objective(_quadratic, _ignore, keep='select')


def test_keep_dream_without_a_dream_is_refused():
  with pytest.raises(ValueError, match='dream_evaluate'):
    es.Objective(_quadratic, _ignore, keep='dream')


def test_diagonal_covariance_learns_each_parameters_scale():
  """controller.covariance=diagonal (sep-CMA-ES) adapts a step size per parameter within a few
  hundred generations at a dimension where the full matrix stays isotropic: on a quadratic half
  of whose parameters are 100x steeper, it narrows its steps along those and gets closer."""
  n = 100
  scale = np.r_[np.full(n // 2, 100.0), np.ones(n // 2)]
  loss = lambda x: (scale * (x - 1) ** 2).sum(-1)  # noqa: E731
  found = {}
  for covariance in ('full', 'diagonal'):
    search = es.Search(es.Settings(n, 8, 0.5, seed=0, covariance=covariance))
    for _ in range(300):
      x = search.ask()
      search.tell(x, -loss(x))
    cma = search.es
    stds = np.sqrt(np.asarray(cma.sigma_vec.scaling * np.ones(n)) ** 2 * cma.sm.variances)
    found[covariance] = (stds[:n // 2].mean() / stds[n // 2:].mean(), loss(search.centroid))
  assert found['full'][0] > 0.9, found  # ~0.97: the full matrix has barely moved
  assert found['diagonal'][0] < 0.7, found  # ~0.52
  assert found['diagonal'][1] < found['full'][1], found


def test_min_sigma_keeps_the_steps_that_noisy_fitness_shrinks(tmp_path):
  """controller.min_sigma: near the top of a noisy fitness CMA-ES's step size shrinks to a tenth
  of where it began (its sigma); with the floor every parameter's std stays at it or above
  though sigma goes on shrinking, the search's std column says so, and a resumed search with the
  floor continues exactly."""
  rng = np.random.default_rng(0)
  noisy = lambda p, g: -((p - 0.1) ** 2).sum(-1) + 0.01 * rng.normal(size=len(p))  # noqa: E731
  stds = {}
  for floor in (0.0, 0.05):
    search = es.Search(es.Settings(30, 8, 0.1, seed=0, min_sigma=floor))
    for _ in range(200):
      x = search.ask()
      search.tell(x, noisy(x, 0))
    stds[floor] = (search.sigma, search.std, np.min(search.es.stds))
  assert stds[0.0][1] < 0.02, stds  # ~0.009: the step has collapsed
  assert stds[0.05][2] >= 0.05 * (1 - 1e-6), stds  # ... but never under the floor
  settings = es.Settings(10, 6, 0.1, seed=1, min_sigma=0.08)
  whole, part = es.State.empty(settings), es.State.empty(settings)
  list(es.run(str(tmp_path / 'a'), whole, 40, 'real', es.Objective(_quadratic, _ignore)))
  list(es.run(str(tmp_path / 'b'), part, 25, 'real', es.Objective(_quadratic, _ignore)))
  resumed = es.load(str(tmp_path / 'b'), settings)
  list(es.run(str(tmp_path / 'b'), resumed, 40, 'real', es.Objective(_quadratic, _ignore)))
  np.testing.assert_array_equal(resumed.returns, whole.returns)
  assert min(whole.columns['std']) >= 0.08 * (1 - 1e-6), whole.columns['std']
  assert whole.columns['sigma'][-1] < 0.08, whole.columns['sigma']  # the floor is not in sigma
  with pytest.raises(ConfigError, match='min_sigma=0.08'):
    es.load(str(tmp_path / 'b'), es.Settings(10, 6, 0.1, seed=1))
  config = Config()
  config.controller.min_sigma = 0.05  # the stage's search gets the config's floor
  world = types.SimpleNamespace(controller=types.SimpleNamespace(num_params=7))
  assert controller_stage.search_settings(config, world).min_sigma == 0.05
  config.controller.min_sigma = -0.1
  with pytest.raises(ConfigError, match='controller.min_sigma=-0.1 must be >= 0'):
    config_lib.validate(config)


def test_changed_settings_and_corrupted_state_are_refused(tmp_path):
  settings = es.Settings(5, 4, 0.2, seed=0)
  state = es.State.empty(settings)
  list(es.run(str(tmp_path), state, 1, 'real', es.Objective(_quadratic, _ignore)))
  with pytest.raises(ConfigError, match='population_size=8'):
    es.load(str(tmp_path), es.Settings(5, 8, 0.2, seed=0))
  with pytest.raises(ConfigError, match="rest='low'"):
    es.load(str(tmp_path), es.Settings(5, 4, 0.2, seed=0, rest='low'))
  with pytest.raises(ConfigError, match="covariance='diagonal'"):
    es.load(str(tmp_path), es.Settings(5, 4, 0.2, seed=0, covariance='diagonal'))
  state.digests[0, 0] ^= 1
  with pytest.raises(DataError, match='diverged at generation 1'):
    es.replay(state)
  path = tmp_path / es.STATE
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(DataError, match='truncated or corrupted'):
    es.load(str(tmp_path), settings)


# ---------------------------------------------------------------------------- the script

def _tensorboard_tags(run_dir) -> set[str]:
  import tensorflow as tf
  tags = set()
  for path in glob.glob(os.path.join(run_dir, 'controller', 'tb', 'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def _history(run_dir):
  with open(os.path.join(run_dir, 'controller', es.HISTORY)) as f:
    return [json.loads(line) for line in f]


def test_killed_dream_run_continues_in_real_env(controller_models, tmp_path):
  """SIGKILLed while dreaming; the rerun switches to the real env and continues the search."""
  run_dir = copy_run(controller_models, str(tmp_path / 'run'))
  common = [f'--run_dir={run_dir}', f'--config={DEBUG}',
            '--config.controller.generations=6', '--config.controller.init_sigma=1']
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'scripts', 'train_controller.py'),
                           *common, '--config.controller.mode=dream',
                           '--config.controller.eval_every=100', '--config.env.max_steps=200'],
                          env=script_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  state = os.path.join(run_dir, 'controller', es.STATE)
  deadline = time.time() + 120
  while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  stderr = proc.communicate()[1]
  assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
  killed_at = len(_history(run_dir))
  assert 1 <= killed_at < 6
  assert not os.path.exists(os.path.join(run_dir, 'controller', 'DONE'))
  run_script('train_controller', *common, '--config.controller.mode=real',
             '--config.controller.eval_every=6', '--config.env.max_steps=20')
  rows = _history(run_dir)
  assert [r['generation'] for r in rows] == [1, 2, 3, 4, 5, 6]  # no gap, no duplicate
  assert [r['mode'] for r in rows] == ['dream'] * killed_at + ['real'] * (6 - killed_at)
  assert rows[-1]['eval_mean'] is not None and rows[0]['eval_mean'] is None
  # what each generation cost, for curves against time (python -m wm status --curves)
  assert all(r['fitness_s'] > 0 for r in rows), [r['fitness_s'] for r in rows]
  assert rows[-1]['eval_s'] > 0 and rows[0]['eval_s'] is None
  # dream fidelity: the evaluated pair also played in the dream, logged beside the real returns
  assert rows[-1]['dream_eval_mean'] is not None and rows[-1]['centroid_dream_eval_mean'] is not None
  assert {'eval/dream_return_mean', 'eval/dream_gap'} <= _tensorboard_tags(run_dir)
  assert os.path.exists(os.path.join(run_dir, 'controller', es.BEST))
  assert os.path.exists(os.path.join(run_dir, 'controller', 'DONE'))


def test_a_real_search_warm_started_in_the_dream(controller_models, tmp_path):
  """controller.dream_generations: the first generations evolve in the dream, the rest in the
  real env, as one search; the evaluations play both throughout."""
  run_dir = copy_run(controller_models, str(tmp_path / 'run'))
  run_script('train_controller', f'--run_dir={run_dir}', f'--config={DEBUG}',
             '--config.controller.mode=real', '--config.controller.dream_generations=2',
             '--config.controller.generations=4', '--config.controller.eval_every=2',
             '--config.env.max_steps=20', '--config.controller.init_sigma=1')
  rows = _history(run_dir)
  assert [r['mode'] for r in rows] == ['dream', 'dream', 'real', 'real']
  assert all(rows[g]['eval_mean'] is not None and rows[g]['dream_eval_mean'] is not None
             for g in (1, 3))
  state = np.load(os.path.join(run_dir, 'controller', es.STATE))
  assert list(state['modes']) == ['dream', 'dream', 'real', 'real']


def test_keep_select_plays_centroids_in_a_dream_of_its_own_and_keeps_the_best(
    controller_models, tmp_path):
  """controller.keep=select through the stage: the centroid plays the selection dream every
  select_every generations and at the last, best.npz is the centroid that scored best there,
  DONE carries its score, and TensorBoard logs the scores."""
  run_dir = copy_run(controller_models, str(tmp_path / 'run'))
  run_script('train_controller', f'--run_dir={run_dir}', f'--config={DEBUG}',
             '--config.controller.mode=dream', '--config.controller.keep=select',
             '--config.controller.select_every=2', '--config.controller.select_episodes=6',
             '--config.controller.generations=5', '--config.controller.eval_every=5',
             '--config.env.max_steps=30', '--config.controller.init_sigma=1')
  rows = _history(run_dir)
  scored = [r['generation'] for r in rows if r['select_score'] is not None]
  assert scored == [2, 4, 5], scored
  best = max((r['select_score'], r['generation']) for r in rows if r['select_score'] is not None)
  folder = os.path.join(run_dir, 'controller')
  with np.load(os.path.join(folder, es.STATE)) as data:
    settings = es.Settings(**json.loads(str(data['settings'])))
  centroids = collections.deque(maxlen=10)
  es.replay(es.load(folder, settings), centroids)
  with np.load(os.path.join(folder, es.BEST)) as data:
    np.testing.assert_allclose(data['params'], centroids[best[1] - 1])
  with open(os.path.join(folder, 'DONE')) as f:
    assert json.load(f)['best_score'] == pytest.approx(best[0])
  assert 'select/centroid_score' in _tensorboard_tags(run_dir)


def test_a_search_starts_from_a_given_mean_and_resumes_from_it(tmp_path):
  """controller.start_from's core: the first mean is `start`, saved with the state, so a resume
  replays the same search; another start is refused, not silently replayed."""
  start = np.linspace(-1, 1, 6)
  settings = es.Settings(6, 8, 0.01, seed=2, start=es.start_digest(start))
  assert settings.start and es.start_digest(None) == ''
  np.testing.assert_array_equal(es.Search(settings, start).centroid, start)
  folder = str(tmp_path)
  whole = es.State.empty(settings, start)
  first = next(es.run(folder, whole, 3, 'real', es.Objective(_quadratic, _ignore)))
  assert np.abs(first.best_params - start).max() < 0.1  # sampled around start, not zeros
  resumed = es.load(folder, settings)
  np.testing.assert_array_equal(resumed.start, start)
  list(es.run(folder, resumed, 3, 'real', es.Objective(_quadratic, _ignore)))
  other = es.State.empty(settings, start)
  list(es.run(str(tmp_path / 'b'), other, 3, 'real', es.Objective(_quadratic, _ignore)))
  np.testing.assert_array_equal(resumed.returns, other.returns)
  with pytest.raises(ConfigError, match='start'):
    es.load(folder, es.Settings(6, 8, 0.01, seed=2))  # the config now asks for zeros
  with pytest.raises(ValueError, match='first mean'):
    es.Search(settings)


def test_a_real_search_started_from_a_dream_searched_controller(controller_models, tmp_path):
  """controller.start_from: a search in the real env starts from another run's controller (here
  evolved in the dream) that shares this run's V and M; a run with another V, or a path that is
  not a run dir, is refused before anything is written."""
  dream_dir = copy_run(controller_models, str(tmp_path / 'dream'))
  run_script('train_controller', f'--run_dir={dream_dir}', '--config.controller.generations=2',
             '--config.controller.init_sigma=1')
  with np.load(os.path.join(dream_dir, 'controller', es.BEST)) as data:
    dreamt = data['params']
  real_dir = copy_run(controller_models, str(tmp_path / 'real'))
  args = (f'--run_dir={real_dir}', '--config.controller.mode=real',
          '--config.controller.generations=1', '--config.controller.init_sigma=0.01',
          '--config.env.max_steps=20')
  run_script('train_controller', *args, f'--config.controller.start_from={dream_dir}')
  state = np.load(os.path.join(real_dir, 'controller', es.STATE))
  np.testing.assert_array_equal(state['start'], dreamt)
  assert json.loads(str(state['settings']))['start'] == es.start_digest(dreamt)

  fresh = copy_run(controller_models, str(tmp_path / 'fresh'))
  missing = run_script('train_controller', *args[1:], f'--run_dir={fresh}',
                       f'--config.controller.start_from={tmp_path / "nowhere"}', check=False)
  assert missing.returncode != 0 and 'Traceback' not in missing.stderr
  assert 'controller.start_from' in missing.stderr and 'is not a folder' in missing.stderr
  other_v = copy_run(dream_dir, str(tmp_path / 'other_v'))
  with open(os.path.join(other_v, 'vae', 'export', 'model.json'), 'a') as f:
    f.write(' ')  # the same V's numbers, another result: its fingerprint differs
  refused = run_script('train_controller', *args[1:], f'--run_dir={fresh}',
                       f'--config.controller.start_from={other_v}', check=False)
  assert refused.returncode != 0 and 'Traceback' not in refused.stderr
  assert 'another vae result' in refused.stderr, refused.stderr[-2000:]
  assert not os.path.exists(os.path.join(fresh, 'controller', es.STATE))


def test_a_real_search_starts_from_its_own_dream_search(controller_models, tmp_path):
  """controller.warm_generations: a dream search of its own (its population, trials and keep)
  in RUN/controller/warm, then the real search from its best with start_sigma; a rerun redoes
  neither, and a top-up continues only the real search."""
  run_dir = copy_run(controller_models, str(tmp_path / 'run'))
  args = (f'--run_dir={run_dir}', f'--config={DEBUG}', '--config.controller.mode=real',
          '--config.controller.warm_generations=2', '--config.controller.warm_population=6',
          '--config.controller.warm_trials=2', '--config.controller.eval_every=1',
          '--config.controller.init_sigma=1', '--config.controller.start_sigma=0.02',
          '--config.env.max_steps=20')
  run_script('train_controller', *args, '--config.controller.generations=1')
  warm = os.path.join(run_dir, 'controller', 'warm')
  with open(os.path.join(warm, es.HISTORY)) as f:
    rows = [json.loads(line) for line in f]
  assert [r['mode'] for r in rows] == ['dream', 'dream']
  assert all(r['eval_mean'] is not None for r in rows)  # keep=real: the game chose its best
  warm_state = np.load(os.path.join(warm, es.STATE))
  assert warm_state['returns'].shape == (2, 6)  # its own population
  assert json.loads(str(warm_state['settings']))['init_sigma'] == 1
  with np.load(os.path.join(warm, es.BEST)) as data:
    warm_best = data['params']
  assert np.abs(warm_best).max() > 0  # evolved, not zeros
  state = np.load(os.path.join(run_dir, 'controller', es.STATE))
  np.testing.assert_array_equal(state['start'], warm_best)
  settings = json.loads(str(state['settings']))
  assert (settings['init_sigma'], settings['start']) == (0.02, es.start_digest(warm_best))
  assert list(state['modes']) == ['real']
  assert os.path.exists(os.path.join(run_dir, 'controller', 'DONE'))

  before = os.path.getmtime(os.path.join(warm, es.STATE))
  run_script('train_controller', *args, '--config.controller.generations=2')  # a top-up
  assert os.path.getmtime(os.path.join(warm, es.STATE)) == before
  assert list(np.load(os.path.join(run_dir, 'controller', es.STATE))['modes']) == ['real'] * 2


@pytest.mark.mpi
def test_mpi_ranks_match_the_local_pool(controller_models, mpi_as_root, tmp_path):
  mpiexec = shutil.which('mpiexec')
  if mpiexec is None:
    pytest.skip('mpiexec not found: apt-get install openmpi-bin libopenmpi-dev (.ci/install_system_packages.sh)')
  probe = subprocess.run([sys.executable, '-c', 'from mpi4py import MPI'], capture_output=True,
                         text=True, env=script_env())
  if probe.returncode != 0:
    pytest.skip(f'mpi4py cannot load MPI ({probe.stderr.strip()[-200:]}): pip install -r '
                'requirements.txt and .ci/install_system_packages.sh')
  args = [f'--config={DEBUG}', '--config.controller.mode=real',
          '--config.controller.generations=1',
          '--config.controller.trials=2', '--config.controller.init_sigma=2',
          '--config.env.max_steps=30', '--config.controller.eval_episodes=2']
  pool_dir = copy_run(controller_models, str(tmp_path / 'pool'))
  run_script('train_controller', f'--run_dir={pool_dir}', '--parallelism=2', *args)
  mpi_dir = copy_run(controller_models, str(tmp_path / 'mpi'))
  launcher = [mpiexec, '-n', '2', '--oversubscribe']
  if os.geteuid() == 0:
    launcher.append('--allow-run-as-root')
  result = subprocess.run([*launcher, sys.executable, 'scripts/train_controller.py',
                           f'--run_dir={mpi_dir}', *args], env=script_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  pool_state = np.load(os.path.join(pool_dir, 'controller', es.STATE))
  mpi_state = np.load(os.path.join(mpi_dir, 'controller', es.STATE))
  np.testing.assert_array_equal(mpi_state['returns'], pool_state['returns'])
  assert len(np.unique(pool_state['returns'])) > 1  # the candidates really differ
  timings = ('fitness_s', 'eval_s')  # wall seconds: the rest must agree exactly
  assert ([{k: v for k, v in row.items() if k not in timings} for row in _history(mpi_dir)] ==
          [{k: v for k, v in row.items() if k not in timings} for row in _history(pool_dir)])
