"""Stage evaluate: the trained controller (or a uniformly random baseline) scored in the real
environment, as the paper's table reports it: mean +- std, min and max over N episodes.

The episodes' seeds come from their own stream (wm/es.py TEST_STREAM), which nothing in training
reads, and frames are drawn at the environment's own resolution (env.render_scale=1) whatever
the controller trained at. Rank 0 scores; other MPI ranks, or local workers, play their share.
Inputs, outputs and flags: scripts/evaluate.py.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf
from absl import logging

from wm import artifacts, envs, es, evaluation
from wm.agent import WorldModel, action_space_of
from wm.infra import cli, fileio, mpi

RESULT = 'result.json'  # the stage's own result: the one that marks it done


def run(stage: cli.Stage, policy: str = 'controller', episodes: int | None = None,
        parallelism: int = 1, params_path: str | None = None,
        output: str = RESULT) -> None:
  """The stage, on every MPI rank: rank 0 scores the episodes the ranks (or workers) play.
  Only RUN/evaluate/result.json finishes the stage (DONE, the score the run reports): another
  `output` (a random baseline, another controller's --params) is written beside it."""
  config = envs.full_size(stage.config)
  world = mpi.world()
  if not world.root:
    if world.comm is not None:
      evaluation.serve(world.comm, config, stage.run.root)
    return
  episodes = episodes or config.controller.test_episodes
  params = None
  if policy == 'controller':
    model = WorldModel.load(stage.run, config, action_space_of(config))
    path = params_path or artifacts.controller_params_path(stage.run)
    params = np.repeat(artifacts.load_params(path, model.controller)[None], episodes, axis=0)
  seeds = es.episode_seeds(config.seed, es.TEST_STREAM, 0, episodes)
  with evaluation.make(config, stage.run.root, parallelism, world.comm,
                       preload=params is not None) as pool:
    outcomes = pool.play(params, seeds)
  returns = outcomes.returns
  result = {'policy': policy, 'params': params_path, 'env': config.env.name,
            'render_scale': config.env.render_scale, 'make_kwargs': config.env.make_kwargs,
            'episodes': len(returns), 'mean': float(returns.mean()), 'std': float(returns.std()),
            'min': float(returns.min()), 'max': float(returns.max()),
            'seed': config.seed, 'seed_stream': es.TEST_STREAM,
            'returns': [float(r) for r in returns],
            # each episode's agent steps, and whether the environment ended it (CarRacing: the
            # lap finished or the car left the playfield; Doom: a death) before its time limit
            'steps': [int(n) for n in outcomes.steps], 'ended': [bool(e) for e in outcomes.ended],
            'ended_count': int(outcomes.ended.sum()), 'mean_steps': float(outcomes.steps.mean())}
  path = os.path.join(stage.dir, output)
  fileio.write_json(path, result)
  write_scalars(tb_dir(stage.dir, output), returns)
  line = (f'{policy} policy, {len(returns)} episodes: {result["mean"]:.1f} +- '
          f'{result["std"]:.1f} (min {result["min"]:.1f}, max {result["max"]:.1f}); '
          f'{result["ended_count"]} ended by the environment before its limit of '
          f'{config.env.agent_steps()} steps, {result["mean_steps"]:.0f} steps on average')
  print(line, flush=True)
  logging.info('wrote %s', path)
  if output == RESULT:
    stage.run.mark_done('evaluate', output=output, mean=result['mean'])
  else:  # a side evaluation (a baseline, another controller): the run's score stays its own
    logging.info('%s is a side result: %s, and the score the run reports, stay as they were',
                 output, stage.run.done_path('evaluate'))


def tb_dir(stage_dir: str, output: str) -> str:
  """STAGE/tb for result.json; STAGE/tb/NAME for --output=NAME.json (a run of its own there)."""
  name = os.path.splitext(output)[0]
  return os.path.join(stage_dir, 'tb', *([] if output == RESULT else [name]))


def write_scalars(folder: str, returns: np.ndarray) -> None:
  """eval/return of every episode and eval/return_mean, replacing an earlier evaluation's."""
  for old in glob.glob(os.path.join(glob.escape(folder), 'events.out.tfevents.*')):
    os.remove(old)
  writer = tf.summary.create_file_writer(folder)
  with writer.as_default():
    for episode, value in enumerate(returns):
      tf.summary.scalar('eval/return', float(value), step=episode)
    tf.summary.scalar('eval/return_mean', float(np.mean(returns)), step=len(returns))
  writer.close()
