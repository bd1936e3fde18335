"""VizDoom TakeCover experiments: the paper's controller trained entirely inside M's dream.

Presets: debug (tests, seconds on a CPU), small (the whole pipeline on 2 cores), paper (Ha &
Schmidhuber 2018's Doom settings, for a SLURM cluster). The agent survives by dodging fireballs;
the return is the number of frames it lived (a random policy lives ~210, "solved" is 750).

Fields and their meaning: wm/config.py. Each preset below changes only what differs from there.
"""

from wm import config as config_lib
from wm.config import Config

PRESETS = ('debug', 'small', 'paper')  # wm.config.load refuses any other name, listing these


def get_config(preset: str = 'small') -> Config:
  c = Config(preset=preset)
  c.env.name = 'VizdoomTakeCover-v1'  # frames from its dict observation's 'screen' (inferred)
  c.env.max_steps = 2100  # the paper's cap on an episode
  c.env.crop_dashboard = False  # TakeCover's screen has no dashboard
  c.collect.policy = 'held'  # random actions held 1-10 frames (collect.hold_max), as the paper's
  c.vae.z_size = 64  # the paper's Doom latent
  c.seq.hidden_size = 512  # the paper's Doom LSTM
  c.controller.mode = 'dream'  # trained only inside M: the real game is never played in training
  c.controller.inputs = 'zh'  # a = W [z, h] + b over the 3 actions (argmax)
  c.controller.dream_temperature = 1.15  # the paper's best transfer
  c.controller.keep = 'dream'  # best.npz chosen by dream evaluations: the game is only watched
  c.seq.window_start = 'episode'  # M learns episodes from their first step, as dreams run
  c.seq.done_weight = 10.0  # deaths are rare (one step in ~300); the paper's Doom M: 10x
  if preset == 'small':
    c.collect.num_rollouts = 2000  # ~715k frames of held random actions: with 500 M learned the deaths by heart
    c.collect.hold_max = 50  # held up to 50 frames: the player crosses the room (docs/results.md)
    c.vae.train_steps = 5000  # ~3 epochs at batch 100: at 2000 V drew no monsters or far fireballs
    c.vae.learning_rate = 6e-4  # 6x the paper's rate: this budget has ~20x fewer steps
    c.seq.sequence_length = 500  # whole episodes (median 292 steps): hits add up off screen
    c.seq.pack = True  # windows end to end in 500-step rows, M restarting at each: no padding computed
    c.seq.batch_size = 10  # 10 packed rows: the real steps of 16 padded windows (a row holds ~1.5)
    c.seq.train_steps = 1500
    c.seq.judges = 1  # a second M, trained beside M (--parallelism=2), judges the dream ...
    c.controller.dream_fitness = 'worst'  # ... a candidate scores its worse world's mean
    c.controller.dream_common = True  # every candidate plays the same dream episodes: 692.7 -> 821.5
    c.controller.dream_done = 'threshold'  # a dream episode ends where M's odds of an end, x16, ...
    c.controller.dream_done_odds = 16.0  # ... pass even: dreams that rank controllers as the game does
    c.controller.population_size = 32
    c.controller.trials = 16  # the paper's 16 (8 a world): 570.5 -> 735.4 on a run that failed
    c.controller.generations = 75  # ... with the same dream episodes as 8 x 150 (docs/results.md)
    c.controller.eval_every = 25  # the best and the centroid also play 16 real episodes
    c.controller.keep = 'final'  # the last centroid: the dream ranks its candidates no better than chance
    c.controller.eval_episodes = 16
    c.controller.test_episodes = 100  # the paper's table: 100 real episodes
    c.play.fps = 35  # the game's own frame rate
  elif preset == 'debug':
    config_lib.shrink_for_tests(c)
    c.controller.trials = 2  # two dream episodes a candidate: fitness is a mean
    c.seq.pack = True  # the small preset's M training and dream, run by the tests
    c.controller.dream_done = 'threshold'
    c.controller.dream_done_odds = 16.0
  elif preset == 'paper':
    c.collect.num_rollouts = 10000  # the paper's 10,000 random rollouts
    c.data.obs_sampled_per_rollout = 1000
    c.data.shuffle_buffer = 100000
    c.vae.train_steps = 30000  # ~1.5 epochs of ~2M frames at batch 100
    c.vae.save_every = 5000
    c.seq.sequence_length = 1000  # the paper's Doom M trained on sequences of 1000
    c.seq.batch_size = 100
    c.seq.train_steps = 20000
    c.seq.save_every = 2000
    c.controller.population_size = 64  # the paper's population
    c.controller.trials = 16  # ... and 16 dream rollouts per candidate
    c.controller.generations = 2000
    c.controller.eval_every = 25
    c.controller.eval_episodes = 100
    c.controller.test_episodes = 100  # the paper's table: 100 episodes
  else:
    raise ValueError(f'unknown preset {preset!r}; presets: {", ".join(PRESETS)}')
  return c
