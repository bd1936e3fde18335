"""Stage 1: collect random-policy rollouts in parallel.

Input:  the experiment config (env, collect.*).
Output: RUN/rollouts/rollout-000123.npz, one per episode (format: wm/rollouts.py), and
        RUN/rollouts/DONE once all collect.num_rollouts exist.

    python scripts/collect_rollouts.py --run_dir=RUN --config=configs/carracing.py:debug \\
        --parallelism=2 [--num_tasks=8 --task_index=3]

Rerunning tops the folder up to collect.num_rollouts; any number of instances may write into the
same folder at once (SLURM array tasks pass --task_index/--num_tasks to split the indices).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging

from wm import cli, collection, envs, rollouts
from wm.progress import Progress

_PARALLELISM = flags.DEFINE_integer('parallelism', 1, 'Worker processes in this job.',
                                     lower_bound=1)
_NUM_TASKS, _TASK_INDEX = cli.define_task_flags('rollouts')


def main(stage: cli.Stage) -> None:
  config = stage.config
  facts = envs.check(config.env, seed=config.seed)
  logging.info('environment %s ok: %s', config.env.name, facts)
  total = len(range(_TASK_INDEX.value, config.collect.num_rollouts, _NUM_TASKS.value))
  todo = collection.todo(stage.dir, config.collect.num_rollouts, _TASK_INDEX.value,
                         _NUM_TASKS.value)
  progress = Progress('collect rollouts', total)
  done, steps, collected = total - len(todo), 0, 0
  progress.update(done, force=True)
  for result in collection.collect(config, stage.dir, _PARALLELISM.value, _TASK_INDEX.value,
                                   _NUM_TASKS.value, log=logging.info):
    done += 1
    steps += result.steps
    collected += 1
    progress.update(done, env_steps=steps)
  have = len(rollouts.list_indices(stage.dir))
  logging.info('collected %d rollouts here (%d steps, %.0f steps/s); %d written by other '
               'processes meanwhile', collected, steps, steps / max(progress.elapsed(), 1e-9),
               len(todo) - collected)
  logging.info('%d of %d rollouts in %s', have, config.collect.num_rollouts, stage.dir)
  if have >= config.collect.num_rollouts:
    stage.run.mark_done('collect', rollouts=have)


if __name__ == '__main__':
  cli.run('collect', main)
