"""Does the dream rank controllers as the game does? Their dream scores beside their real ones.

Input:  RUN with V and M exports, RUN/seq/initial_latents.npz and the judges its config names
        (seq.judges, controller.dream_checkpoints, controller.dream_judge_runs); controllers
        searched through this run's V and M (--params: best.npz files, e.g. of other searches'
        run dirs that link RUN's vae and seq) and each one's real evaluation (--results:
        scripts/evaluate.py's JSON files, all on the same episodes).
Output: printed: each controller's real mean, its dream episodes' mean in each M (the final M,
        then each judge), the score the search ranks by (controller.dream_fitness), and the rank
        correlation (Spearman) of each of those columns with the real means. Nothing is written.

The dream is the run's own (temperature, end rule, judges, precision; --config.controller.dream_*
tries another), with common episodes drawn from their own seed stream (--seed), never the
search's. A dream whose ranking follows the game's can choose between controllers (or searches)
without the game; one that ranks at random cannot, however many episodes it plays.

    python scripts/rank_dream.py --run_dir=runs/doom_small --config=configs/doom.py:small \
        --params=runs/a/controller/best.npz,runs/b/controller/best.npz,... \
        --results=runs/a/evaluate/result.json,runs/b/evaluate/result.json,... [--episodes=256]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

import numpy as np
from absl import app, flags

from wm import artifacts, es
from wm.errors import UserError
from wm.infra import cli, fileio

_PARAMS = flags.DEFINE_list('params', [], 'Controller parameter files (best.npz), 3 or more.')
_RESULTS = flags.DEFINE_list('results', [], 'Each controller\'s real evaluation '
                             '(scripts/evaluate.py\'s JSON), in the order of --params.')
_EPISODES = flags.DEFINE_integer('episodes', 256, 'Dream episodes a controller plays, split '
                                 'evenly between the Ms.', lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'The dream episodes\' seed (its own stream).')

SAME_EPISODES = ('env', 'seed', 'seed_stream', 'episodes', 'make_kwargs')  # result fields


def ranks(values: np.ndarray) -> np.ndarray:
  """Each value's rank (0-based), ties sharing their mean rank."""
  order = np.argsort(values, kind='stable')
  ranked = np.empty(len(values))
  ranked[order] = np.arange(len(values))
  for value in np.unique(values):
    tied = values == value
    ranked[tied] = ranked[tied].mean()
  return ranked


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """The rank correlation of a and b (nan when either is constant)."""
  ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
  if ra.std() == 0 or rb.std() == 0:
    return float('nan')
  return float(np.corrcoef(ra, rb)[0, 1])


def real_means(paths: list[str]) -> np.ndarray:
  """The real evaluations' means, refused unless every file scored the same episodes."""
  results = []
  for path in paths:
    result = fileio.read_json_checked(path, 'no evaluation there', 'give scripts/evaluate.py\'s '
                                      'result of that controller')
    if not isinstance(result, dict) or 'mean' not in result:
      raise UserError(f'--results: {path} is not an evaluation result (scripts/evaluate.py '
                      'writes one: RUN/evaluate/result.json or --output=NAME.json)')
    results.append(result)
  first = {k: results[0].get(k) for k in SAME_EPISODES}
  for path, result in zip(paths[1:], results[1:]):
    other = {k: result.get(k) for k in SAME_EPISODES}
    if other != first:
      raise UserError(f'--results: {path} scored other episodes than {paths[0]} ({other} '
                      f'against {first}): evaluate every controller with the same config, seed '
                      'and --episodes')
  return np.array([r['mean'] for r in results], float)


@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  del argv  # cli.parse_flags refused positional arguments
  if len(_PARAMS.value) != len(_RESULTS.value) or len(_PARAMS.value) < 3:
    raise UserError(f'give 3 or more controllers and a result for each: --params names '
                    f'{len(_PARAMS.value)}, --results {len(_RESULTS.value)}')
  run, config = cli.run_to_read('a run dir with trained V and M exports')
  real = real_means(_RESULTS.value)
  artifacts.require_world_model(run)
  from wm.agent import WorldModel, action_space_of  # TensorFlow loads after these checks
  from wm.stages import controller as controller_stage
  model = WorldModel.load(run, config, action_space_of(config))
  params = np.stack([artifacts.load_params(p, model.controller) for p in _PARAMS.value])
  dream = controller_stage.dream_of(run, config, model)
  returns = dream.episodes(params, _EPISODES.value, es.derive_seed(_SEED.value, es.RANK_STREAM))
  worlds = dream.world_means(returns)
  columns = {'M': worlds[:, 0], **{f'judge {i}': worlds[:, i] for i in range(1, dream.worlds)},
             'searched': dream.score(returns)}
  c = config.controller
  print(f'dream: temperature {c.dream_temperature}, ends {c.dream_done} (odds x'
        f'{c.dream_done_odds:g}), {dream.worlds} Ms, fitness {c.dream_fitness}; '
        f'{_EPISODES.value} episodes a controller (seed {_SEED.value})')
  names = _PARAMS.value
  width = max(len(n) for n in names)
  print(f'{"controller":{width}s}  {"real":>8s}' + ''.join(f'  {k:>10s}' for k in columns))
  for i, name in enumerate(names):
    print(f'{name:{width}s}  {real[i]:8.1f}' + ''.join(f'  {v[i]:10.3f}' for v in columns.values()))
  print('rank correlation with the real means: ' + ', '.join(
      f'{k} {spearman(v, real):+.2f}' for k, v in columns.items()))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
