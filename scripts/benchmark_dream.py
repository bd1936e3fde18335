"""Benchmark of the dream's generations: ended episodes leaving the batch against all kept, and
with judges, M's head on its own rows against on every row.

Input:  RUN with V and M exports, RUN/seq/initial_latents.npz, the judges its config names
        (seq.judges, controller.dream_checkpoints, controller.dream_judge_runs), and its CMA-ES
        state (RUN/controller) when it has one: trained models, since what is measured depends
        on how long M's dreams live.
Output: printed figures from one run, the sides interleaved on the same generations: the
        wall time of one generation's dream fitness (controller.population_size x
        controller.trials episodes, with the run's own dream: temperature, end rule, judges,
        fitness, precision, dropout), (a) with ended episodes leaving the batch every
        --compact_every steps (wm.dream.COMPACT_EVERY), (b) with every row stepped until the
        batch's last episode ends (the dream before); the episodes' own steps per second; and
        the largest difference between the two sides' returns (float rounding only). A dream
        with judges adds a third side, (c) leaving as (a) but with M's head predicting every
        row and the judged rows' predictions dropped (the dream before `head_rows`: M
        predicts only its own rows), and a fourth, (d) leaving as (a) with every judge stepping
        on every row and the likeliest end counting (controller.dream_done_from=all; its returns
        differ by design, so their mean is printed, not their difference), or with each row's
        own M's end when the run's config sets all. The population is the one the run's search
        asks next (its CMA-ES state replayed, to --after_generation), or, for a run without one,
        random parameters at controller.init_sigma.

    python scripts/benchmark_dream.py --run_dir=runs/doom_small --config=configs/doom.py:small
"""

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

import numpy as np
from absl import app, flags

from wm import dream as dream_lib, es
from wm.agent import WorldModel, action_space_of
from wm.errors import UserError
from wm.infra import cli
from wm.stages import controller as controller_stage

_GENERATIONS = flags.DEFINE_integer('generations', 3, 'Generations measured on each side (each '
                                    'its own dream seed, the same on both sides).')
_AFTER = flags.DEFINE_integer('after_generation', None, 'Measure the population the search asked '
                              'after this many of its generations (default: all of them): '
                              'how long dreams live, so what leaving saves, grows as a search '
                              'finds M\'s long lives.', lower_bound=0)
_COMPACT_EVERY = flags.DEFINE_integer('compact_every', dream_lib.COMPACT_EVERY, 'Steps between '
                                      'two looks for ended episodes on the leaving side.',
                                      lower_bound=1)


@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  del argv  # cli.parse_flags refused positional arguments
  run, config = cli.run_to_read('a run dir with trained V and M exports')
  c = config.controller
  model = WorldModel.load(run, config, action_space_of(config))
  settings = controller_stage.search_settings(config, model)
  state = es.load(run.stage_dir('controller'), settings)
  searched = state.generation > 0
  if _AFTER.value is not None:
    if _AFTER.value > state.generation:
      raise UserError(f'--after_generation={_AFTER.value}: the run\'s search has '
                      f'{state.generation} generations')
    state = dataclasses.replace(state, returns=state.returns[:_AFTER.value],
                                digests=state.digests[:_AFTER.value])
  if searched:
    population, source = es.replay(state).ask(), f'generation {state.generation + 1} of its search'
  else:
    rng = np.random.default_rng(0)
    population = rng.normal(size=(c.population_size, settings.num_params)) * c.init_sigma
    source = 'random parameters (the run has no search)'
  dream = controller_stage.dream_of(run, config, model)
  sides = {'leaving': (dream, _COMPACT_EVERY.value), 'kept': (dream, dream.max_steps)}
  if dream.judges:
    sides['head on every row'] = (head_on_every_row(controller_stage.dream_of(run, config, model)),
                                  _COMPACT_EVERY.value)
    other = controller_stage.dream_of(run, config, model)
    other.done_from_all = not dream.done_from_all  # before its first episode traces the steps
    sides[ENDS[other.done_from_all]] = (other, _COMPACT_EVERY.value)
  for played, every in sides.values():
    played.compact_every = every
    played.returns(*played.rows(population, c.trials, 0))  # traces both stretch lengths' shapes
  times, steps, returns = ({s: [] for s in sides} for _ in range(3))
  for generation in range(1, _GENERATIONS.value + 1):
    rows = dream.rows(population, c.trials, es.derive_seed(config.seed, es.TRAIN_STREAM,
                                                           generation))
    for side, (played, every) in sides.items():
      played.compact_every = every
      start = time.perf_counter()
      result, taken = played.returns(*rows)
      times[side].append(time.perf_counter() - start)
      steps[side].append(taken)
      returns[side].append(result)

  lives = np.array(steps['kept'], float) / len(rows[0])
  print(f'dream of {run.root}: {len(rows[0])} episodes a generation ({c.population_size} x '
        f'{c.trials}, {dream.worlds} M{"s" if dream.worlds > 1 else ""}), cap '
        f'{dream.max_steps} steps, M in {dream.precision}; population: {source}')
  print(f'episode length, mean over the generations: {lives.mean():.0f} steps')
  for side in sides:
    total = sum(times[side])
    print(f'{side:17} {1000 * total / len(times[side]):9.1f} ms a generation, '
          f'{sum(steps[side]) / total:9,.0f} episode steps/s')
  for side in list(sides)[1:]:
    if side in ENDS.values():
      print(f'leaving / {side}: {sum(times[side]) / sum(times["leaving"]):.2f}x faster; mean '
            f'return {np.mean(returns[side]):.1f} against {np.mean(returns["leaving"]):.1f}')
      continue
    print(f'leaving / {side}: {sum(times[side]) / sum(times["leaving"]):.2f}x faster; largest '
          'difference in an episode\'s return: '
          f'{max(np.abs(a - b).max() for a, b in zip(returns["leaving"], returns[side])):.3g}')


ENDS = {True: 'ends of every M', False: 'own M\'s ends'}  # side (d): controller.dream_done_from


def head_on_every_row(dream: dream_lib.Dream) -> dream_lib.Dream:
  """The dream with M's head predicting every row and the judged rows' predictions dropped
  after (before `head_rows`), for the third side; to be called before its first episode."""
  step = dream._step

  def whole(z, action, state, mask, head_rows=None):
    prediction, state = step(z, action, state, mask)
    if head_rows is None:
      return prediction, state
    return type(prediction)(**{f.name: getattr(prediction, f.name)[:head_rows]
                               for f in dataclasses.fields(prediction)}), state

  dream._step = whole
  return dream


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
