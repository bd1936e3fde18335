"""Stage 'evaluate': N real episodes of the trained controller (or a random baseline), scored.

Input:  RUN/vae/export, RUN/seq/export and RUN/controller/best.npz (or --params=FILE); nothing
        but the config with --policy=random.
Output: RUN/evaluate/result.json (or --output=NAME.json): returns of every episode, mean, std,
        min, max, the policy and the seeds' stream; RUN/evaluate/DONE. Prints `mean +- std (min .. max)` as the
        paper's table does.

    python scripts/evaluate.py --run_dir=RUN --episodes=100 --parallelism=2
    python scripts/evaluate.py --run_dir=RUN --policy=random --output=random.json
    mpiexec -n 8 python scripts/evaluate.py --run_dir=RUN --episodes=1024

The episodes' seeds come from their own seed stream (wm/es.py TEST_STREAM), so they are never the
episodes the controller was trained or selected on. The random baseline draws a uniformly random
action every frame. Frames are always drawn at the environment's own resolution
(env.render_scale=1), so the score is on CarRacing's own pixels whatever resolution the
controller was trained at.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import flags, logging

from wm import cli, envs, es, evaluation, fileio, mpi
from wm.agent import WorldModel, action_space_of, load_params
from wm.errors import UserError

_POLICY = flags.DEFINE_enum('policy', 'controller', ['controller', 'random'],
                            'controller: the trained one; random: uniform random actions.')
_EPISODES = flags.DEFINE_integer('episodes', None, 'Episodes to play (default: '
                                  'controller.test_episodes).', lower_bound=1)
_PARALLELISM = flags.DEFINE_integer('parallelism', 1, 'Local worker processes (ignored under '
                                    'MPI: the ranks are the workers).', lower_bound=1)
_PARAMS = flags.DEFINE_string('params', None, 'Controller parameters (default: '
                              'RUN/controller/best.npz).')
_OUTPUT = flags.DEFINE_string('output', 'result.json', 'Result file name inside RUN/evaluate/.')


def main(stage: cli.Stage) -> None:
  if os.path.basename(_OUTPUT.value) != _OUTPUT.value or not _OUTPUT.value.endswith('.json'):
    raise UserError(f'--output={_OUTPUT.value!r} must be a file name ending in .json (it is '
                    f'written inside {stage.dir})')
  config = envs.full_size(stage.config)
  world = mpi.world()
  if not world.root:
    if world.comm is not None:
      evaluation.serve(world.comm, config, stage.run.root)
    return
  episodes = _EPISODES.value or config.controller.test_episodes
  params = None
  if _POLICY.value == 'controller':
    model = WorldModel.load(stage.run, config, action_space_of(config))
    path = _PARAMS.value or os.path.join(stage.run.stage_dir('controller'), es.BEST)
    params = np.repeat(load_params(path, model.controller)[None], episodes, axis=0)
  seeds = es.episode_seeds(config.seed, es.TEST_STREAM, 0, episodes)
  with evaluation.make(config, stage.run.root, _PARALLELISM.value, world.comm,
                       preload=params is not None) as pool:
    returns = pool.evaluate(params, seeds)
  result = {'policy': _POLICY.value, 'params': _PARAMS.value, 'env': config.env.name,
            'render_scale': config.env.render_scale,
            'episodes': len(returns), 'mean': float(returns.mean()), 'std': float(returns.std()),
            'min': float(returns.min()), 'max': float(returns.max()),
            'seed': config.seed, 'seed_stream': es.TEST_STREAM,
            'returns': [float(r) for r in returns]}
  path = os.path.join(stage.dir, _OUTPUT.value)
  fileio.write_json(path, result)
  line = (f'{_POLICY.value} policy, {len(returns)} episodes: {result["mean"]:.1f} +- '
          f'{result["std"]:.1f} (min {result["min"]:.1f}, max {result["max"]:.1f})')
  print(line, flush=True)
  logging.info('wrote %s', path)
  stage.run.mark_done('evaluate', output=_OUTPUT.value, mean=result['mean'])


if __name__ == '__main__':
  if mpi.launched_ranks()[1] > 0:
    sys.argv.append('--nostore_snapshot')  # rank 0 writes the stage's snapshot
  cli.run('evaluate', main)
