"""Benchmark of the data stages: collection overhead and scaling, and raw dataset reading speed.

Input:  nothing (collects its own data into --work_dir, default a temporary folder).
Output: the ratios the data stages must reach, printed as a table (and --json_out if given):
  collect/overhead  collector steps/s with 1 worker / raw env+policy steps/s     (goal >= 0.95)
  collect/scaling   collector steps/s with 2 workers / with 1 worker              (goal >= 1.8)
                    (each side plays whole episodes until --min_steps / --scaling_steps, as a
                    stage of hundreds of rollouts does: a short episode, Doom's ~200-300 steps,
                    would otherwise measure making the environment and starting the workers)
  data/frames_per_s raw dataset builder output frames/s (all frames of each rollout, and 100 of
                    each)                                                          (goal >= 30k)
  shard/level_ratio the shard stage's frames/s at the config's records.compress_level / at zlib's
                    default level 6, on the same rollouts in this process, TensorFlow imported (as
                    each of the stage's workers runs once started), with the bytes' ratio and
                    the ratio of V's reading speed (data/frames_per_s_all_frames) on the two
  env/action_repeat raw env+policy frames/s at the preset's env.action_repeat / at 1 (context:
                    CarRacing draws only the frames the agent sees)
  env/render_scale  raw env+policy agent steps/s at the preset's env.render_scale / at 1 (both
                    at the preset's action repeat)
  env/make_kwargs   raw env+policy steps/s with the config's env.make_kwargs / without them, on
                    the same whole episodes (only when env.make_kwargs is set: e.g. VizDoom's
                    --config.env.make_kwargs=screen_resolution=RES_160X120)

    python scripts/benchmark_data.py [--config=configs/doom.py:small] [--steps=500 --rollouts=8]
                                     [--config.collect.compress_level=0 ...]
                                     [--config.env.make_kwargs=screen_resolution=RES_160X120]

The environment, the random policy and the collector's settings are the --config preset's
(default the CarRacing small preset) with any --config.a.b=v overrides; the collector's ratios
are taken at every frame drawn at full size whatever env.action_repeat and env.render_scale say.
The action-repeat and render-scale ratios are CarRacing's and measured only for it.

The two sides of each ratio run alternately in the same process, several rounds, and the median
is reported, since shared machines are noisy.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import app, flags
import numpy as np

from wm import config as config_lib, envs, policies
from wm.infra import cli
from wm.stages import collect

_STEPS = flags.DEFINE_integer('steps', 500, 'Steps per rollout.')
_ROLLOUTS = flags.DEFINE_integer('rollouts', 8, 'Rollouts per scaling measurement, at least.')
_MIN_STEPS = flags.DEFINE_integer('min_steps', 4000, 'Steps each side of the overhead ratio '
                                  'plays at least: whole episodes, as many as it takes.')
_SCALING_STEPS = flags.DEFINE_integer('scaling_steps', 20000, 'Steps each side of the scaling '
                                      'ratio collects at least (the workers start once a stage).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds per ratio.')
_WORK_DIR = flags.DEFINE_string('work_dir', None, 'Scratch folder (default: a temp folder).')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Also write the results here.')
_READING_SECONDS = flags.DEFINE_float('reading_seconds', 8.0, 'Seconds each reading rate is '
                                      'measured for.')


def make_config(num_rollouts: int) -> config_lib.Config:
  c = cli.resolve_config(None, cli.overrides())  # --config and its --config.a.b=v overrides
  c.env.max_steps = _STEPS.value
  c.env.action_repeat = 1  # the collector's ratios: every frame drawn, at full size, and kept
  c.env.render_scale = 1.0
  c.collect.num_rollouts = num_rollouts
  return c


def raw_steps_per_s(config, seed: int) -> float:
  """The env and policy alone: no frames kept, nothing written."""
  env = envs.make(config.env)
  start = time.perf_counter()
  steps = play_random(env, config, seed)
  return steps / (time.perf_counter() - start)


def raw_episodes_steps_per_s(config, seeds: list[int]) -> float:
  """The collector's work without the collector: make the env once, then play `seeds`' episodes
  with the random policy, keeping no frames and writing nothing."""
  start = time.perf_counter()
  env = envs.make(config.env)
  steps = sum(play_random(env, config, seed) for seed in seeds)
  env.close()
  return steps / (time.perf_counter() - start)


def play_random(env, config, seed: int) -> int:
  """Steps of one episode of the preset's random policy."""
  policy = policies.make_random(config.collect, env.action_space)
  frame, steps = env.reset(seed=seed), 0
  policy.reset(seed)
  for _ in range(config.env.agent_steps()):
    frame, _, terminated, truncated = env.step(policy.act(frame).action)
    steps += 1
    if terminated or truncated:
      break
  return steps


def alternating_env_rates(first: dict, second: dict) -> tuple[float, float]:
  """Raw env+policy agent steps/s under two sets of env fields, in alternating rounds; medians."""
  rounds = []
  for r in range(_ROUNDS.value):
    config = make_config(1)
    seed = collection_seed(config, r)
    rates = []
    for fields in (first, second):
      for name, value in fields.items():
        setattr(config.env, name, value)
      rates.append(raw_steps_per_s(config, seed))
    rounds.append(rates)
  first_rate, second_rate = np.median(rounds, axis=0)
  return first_rate, second_rate


def collector_steps_per_s(config, folder: str, parallelism: int) -> float:
  start = time.perf_counter()
  steps = sum(r.steps for r in collect.collect(config, folder, parallelism))
  return steps / (time.perf_counter() - start)


def reading_frames_per_s(paths, per_rollout: int) -> float:
  from wm import datasets
  data = datasets.raw_frames(paths, per_rollout, shuffle_buffer=10000, batch_size=100)
  iterator = iter(data)
  for _ in range(20):  # warm up the pipeline
    next(iterator)
  frames, start = 0, time.perf_counter()
  while time.perf_counter() - start < _READING_SECONDS.value:
    frames += next(iterator).shape[0]
  return frames / (time.perf_counter() - start)


@cli.exits_on_user_error
def main(argv):
  del argv
  work = _WORK_DIR.value or tempfile.mkdtemp(prefix='wm-bench-')
  results = collector_ratios(work)
  if flags.FLAGS.config.split(':')[0].endswith('carracing.py'):
    results.update(carracing_ratios())
  if make_config(1).env.make_kwargs:
    results.update(make_kwargs_ratios(int(results['collect/overhead_rollouts'])))
  shard_results, paths = shard_rates(work, int(results['collect/scaling_rollouts']))
  results.update(shard_results)
  results.update(reading_rates(paths))
  report(results)


def collector_ratios(work: str) -> dict[str, float]:
  """Overhead: the raw loop vs the collector (one worker, in process) on the same episodes,
  alternating; scaling: 1 worker vs 2 workers on the same rollouts. Episode counts come from
  the length of a first raw episode (which also warms the environment up)."""
  config = make_config(1)
  env = envs.make(config.env)
  length = max(1, play_random(env, config, collection_seed(config, 0)))
  env.close()
  overhead_rollouts = -(-_MIN_STEPS.value // length)
  scaling_rollouts = max(_ROLLOUTS.value, -(-_SCALING_STEPS.value // length))
  overhead, scaling = [], []
  for r in range(_ROUNDS.value):
    config = make_config(overhead_rollouts)
    seeds = [collection_seed(config, i) for i in range(overhead_rollouts)]
    raw = raw_episodes_steps_per_s(config, seeds)
    collected = collector_steps_per_s(config, os.path.join(work, f'overhead-{r}'), 1)
    overhead.append((raw, collected))
  for r in range(_ROUNDS.value):
    config = make_config(scaling_rollouts)
    one = collector_steps_per_s(config, os.path.join(work, f'scale1-{r}'), 1)
    two = collector_steps_per_s(config, os.path.join(work, f'scale2-{r}'), 2)
    scaling.append((one, two))
  raw, collected = np.median(overhead, axis=0)
  one, two = np.median(scaling, axis=0)
  return {'collect/episode_steps': length, 'collect/overhead_rollouts': overhead_rollouts,
          'collect/scaling_rollouts': scaling_rollouts, 'collect/raw_env_steps_per_s': raw,
          'collect/collector_steps_per_s_1_worker': collected,
          'collect/overhead_ratio': collected / raw, 'collect/steps_per_s_2_workers': two,
          'collect/scaling_ratio': two / one}


def carracing_ratios() -> dict[str, float]:
  """Frames/s acting every frame vs every k-th, and agent steps/s drawing the full window vs the
  preset's smaller one (at k)."""
  preset = cli.resolve_config(None, cli.overrides()).env
  k = preset.action_repeat
  every, kth = alternating_env_rates({'action_repeat': 1}, {'action_repeat': k})
  kth *= k  # agent steps/s -> frames/s
  full, small = alternating_env_rates({'action_repeat': k},
                                      {'action_repeat': k, 'render_scale': preset.render_scale})
  return {'env/frames_per_s_action_repeat_1': every, f'env/frames_per_s_action_repeat_{k}': kth,
          'env/action_repeat_ratio': kth / every, 'env/agent_steps_per_s_render_scale_1': full,
          f'env/agent_steps_per_s_render_scale_{preset.render_scale}': small,
          'env/render_scale_ratio': small / full}


def make_kwargs_ratios(num_rollouts: int) -> dict[str, float]:
  """Raw env+policy steps/s on the same whole episodes (as many as the overhead ratio plays)
  without env.make_kwargs and with them, in alternating rounds; medians."""
  given = make_config(1).env.make_kwargs
  rounds = []
  for _ in range(_ROUNDS.value):
    config = make_config(num_rollouts)
    seeds = [collection_seed(config, i) for i in range(num_rollouts)]
    rates = []
    for make_kwargs in ('', given):
      config.env.make_kwargs = make_kwargs
      rates.append(raw_episodes_steps_per_s(config, seeds))
    rounds.append(rates)
  without, with_them = np.median(rounds, axis=0)
  return {'env/raw_steps_per_s_without_make_kwargs': without,
          'env/raw_steps_per_s_with_make_kwargs': with_them,
          'env/make_kwargs_ratio': with_them / without}


def shard_rates(work: str, num_rollouts: int) -> tuple[dict[str, float], list[str]]:
  """The shard stage (in this process, shards of ~1 MB of rollouts, no validation split) on the
  last scaling data set at zlib level 6 and at the config's records.compress_level,
  alternating; medians, and the last round's shards at the config's level."""
  from wm.stages import shard
  config = make_config(num_rollouts)
  config.records.shard_size_mb = 1.0
  config.records.valid_fraction = 0.0
  source = os.path.join(work, f'scale2-{_ROUNDS.value - 1}')
  levels = (6, config.records.compress_level)
  rounds = []
  for r in range(_ROUNDS.value):
    rates = []
    for level in levels:
      config.records.compress_level = level
      out = os.path.join(work, f'shard-{r}-level{level}')
      start = time.perf_counter()
      manifests = shard.shard(config, source, out, log=lambda m: None)
      seconds = time.perf_counter() - start
      frames = sum(m['num_frames'] for m in manifests.values())
      size = sum(e['bytes'] for m in manifests.values() for e in m['shards'])
      paths = shard.shard_paths(os.path.join(out, 'train'))
      rates.append((frames / seconds, size, reading_frames_per_s(paths, _STEPS.value + 1)))
    rounds.append(rates)
  (default_rate, default_bytes, default_reading), (rate, size, reading) = np.median(rounds, axis=0)
  level = levels[1]
  return {'shard/frames_per_s_level_6': default_rate, f'shard/frames_per_s_level_{level}': rate,
          'shard/level_ratio': rate / default_rate, 'shard/bytes_ratio': size / default_bytes,
          'shard/reading_ratio': reading / default_reading}, paths


def reading_rates(paths: list[str]) -> dict[str, float]:
  """Reads the shards shard_rates wrote at the config's level back, every frame and 100 of each
  rollout."""
  return {'data/shards': len(paths),
          'data/frames_per_s_all_frames': reading_frames_per_s(paths, _STEPS.value + 1),
          'data/frames_per_s_100_per_rollout': reading_frames_per_s(paths, 100)}


def report(results: dict[str, float]) -> None:
  given = ' '.join(f'--config.{k}={v}' for k, v in cli.overrides().items())
  print(f'{"metric":42s} value  ({flags.FLAGS.config}{" " + given if given else ""})')
  for key, value in results.items():
    print(f'{key:42s} {value:,.2f}')
  goals = {'collect/overhead_ratio': 0.95, 'collect/scaling_ratio': 1.8,
           'data/frames_per_s_all_frames': 30000}
  for key, goal in goals.items():
    print(f'{key}: {results[key]:,.2f} (goal >= {goal:,}) {"ok" if results[key] >= goal else "MISSED"}')
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w') as f:
      json.dump(results, f, indent=2)


def collection_seed(config, index: int) -> int:
  from wm import rollouts
  return rollouts.rollout_seed(config.seed, index)


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, ('config',)))
