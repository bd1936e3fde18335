"""CarRacing-v3 experiments. Presets: debug (tests, seconds on a CPU), small (a laptop run of the
whole pipeline on 2 cores), paper (Ha & Schmidhuber 2018's scale, for a SLURM cluster).

Fields and their meaning: wm/config.py. Each preset below changes only what differs from there.
"""

from wm import config as config_lib
from wm.config import Config

PRESETS = ('debug', 'small', 'paper')  # wm.config.load refuses any other name, listing these


def get_config(preset: str = 'small') -> Config:
  c = Config(preset=preset)
  if preset == 'small':
    # wm/config.py's defaults, with what makes a car drive within an hour on 2 cores:
    c.env.action_repeat = 4  # act every 4th frame: 3.5x the frames/s, 250 agent steps per episode
    c.env.render_scale = 0.25  # draw on a 250x200 window: 2.5x the agent steps/s (evaluate: full)
    c.vae.train_steps = 2000
    c.seq.train_steps = 1500
    c.controller.mode = 'real'  # evolve in the real env (the dream alone did not drive here)
    c.controller.inputs = 'zh'  # the paper's controller: h carries what z cannot (speed, turning)
    c.controller.rest = 'low'  # gas, brake off at a zero output: no unlearning a half-on brake
    c.controller.trials = 2
    c.controller.train_patience = 25  # end a training episode 100 frames after its last new tile
    c.controller.generations = 360  # ~43 min here (480: 61, over the hour), docs/results.md
    c.controller.eval_every = 20
    c.controller.eval_episodes = 16  # the best and the centroid each play 16 episodes
    c.controller.min_sigma = 0.05  # a floor under the step: the search walks on, not closes in
    c.controller.keep = 'final'  # best.npz: the last centroid (floor and final: +73 to +116 on
    # 3 seeds against the mean of the last 80 centroids without a floor, docs/results.md)
    c.controller.test_episodes = 100  # evaluate as the paper's table: 100 episodes (~2 min)
    c.play.fps = 12  # videos in real time: the agent sees 50 / 4 frames per second
  elif preset == 'debug':
    config_lib.shrink_for_tests(c)
  elif preset == 'paper':
    c.collect.num_rollouts = 10000  # the paper's 10,000 random rollouts
    c.data.obs_sampled_per_rollout = 1000
    c.data.shuffle_buffer = 100000
    c.vae.train_steps = 100000  # ~1 epoch of 10M frames at batch 100
    c.vae.save_every = 5000
    c.seq.batch_size = 100
    c.seq.train_steps = 20000  # ~20 epochs of 10,000 rollouts at batch 100 x 100 steps
    c.seq.save_every = 2000
    c.controller.population_size = 64  # the paper's population
    c.controller.trials = 16  # ... and 16 rollouts per candidate
    c.controller.generations = 1800
    c.controller.mode = 'real'  # the paper trained CarRacing's controller in the real env
    c.controller.eval_episodes = 1024  # the paper's evaluation of the best every 25 generations
    c.controller.test_episodes = 100  # the paper's table: 100 episodes
  else:
    raise ValueError(f'unknown preset {preset!r}; presets: {", ".join(PRESETS)}')
  return c
