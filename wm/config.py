"""The experiment config: typed sections, presets, dotted overrides and validation.

The schema lives here, one dataclass per stage, every field with its meaning. Experiment files in
`configs/` (for example `configs/carracing.py`) define `get_config(preset)` returning a `Config`
with the preset's values. On the command line `--config=configs/carracing.py:debug` picks file and
preset and `--config.vae.learning_rate=3e-4` overrides any field. Unknown fields, wrong types and
impossible values are refused with a `ConfigError` naming the field, before any work starts.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import io
import json
import os
import tokenize
import traceback
import typing
from typing import Any

from wm.errors import ConfigError
from wm.models import registry

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = 'configs/carracing.py:small'


@dataclasses.dataclass
class EnvConfig:
  name: str = 'CarRacing-v3'  # registered environment name (see wm/envs.py REGISTRY)
  max_steps: int = 1000  # steps per episode at most (the episode is truncated there)
  frame_size: int = 64  # frames are resized to frame_size x frame_size x 3 uint8
  crop_dashboard: bool = True  # cut the env's dashboard rows off before resizing (the paper does)
  domain_randomize: bool = False  # CarRacing only: random track and grass colours each episode
  fast_render: bool = True  # CarRacing only: draw only visible polygons (wm/carracing.py), ~2x faster
  action_repeat: int = 1  # the agent acts every this many frames, holding its action; rewards summed
  render_scale: float = 1.0  # CarRacing, fast_render: draw on this fraction of the window (0.25: 2.5x)
  make_kwargs: str = ''  # more keyword arguments for gym.make, 'key=value,...' (values as Python literals, else strings): e.g. screen_resolution=RES_160X120 (VizDoom)

  def agent_steps(self) -> int:
    """Steps of the agent (one per action_repeat frames) in an episode of max_steps frames."""
    return -(-self.max_steps // self.action_repeat)

  def gym_kwargs(self) -> dict[str, Any]:
    """env.make_kwargs as gym.make's keyword arguments; a ConfigError names a malformed item."""
    return parse_make_kwargs(self.make_kwargs)


@dataclasses.dataclass
class CollectConfig:
  num_rollouts: int = 200  # rollouts wanted in RUN/rollouts; reruns top up to this, never beyond
  policy: str = 'brownian'  # uniform | brownian | held (random, wm/policies.py) | controller (a trained one)
  brownian_sigma: float = 0.3  # brownian: std of the action change per step, in action-range units
  hold_min: int = 1  # held: an action is held for at least this many frames
  hold_max: int = 10  # held: ... and at most this many frames
  compress_level: int = 1  # zlib level of the rollout .npz files (1 is fast, 9 is small; the bytes, not the frames: a finished collect stands when it changes)
  controller_run: str = ''  # policy=controller: the run dir whose V, M and controller/best.npz act
  action_noise: float = 0.1  # policy=controller: exploration, Gaussian std per action in units of its range (Discrete: P(random action))


@dataclasses.dataclass
class RecordsConfig:
  shard_size_mb: float = 150.0  # target size of one TFRecord shard on disk
  valid_fraction: float = 0.1  # share of rollouts in the validation split (at least one if > 0)
  compress_level: int = 1  # zlib level of the GZIP shards, raw and encoded (on Doom's frames 1 makes the shard stage 2.9x faster than 6 for ~20% more bytes)
  reuse_from: str = ''  # a run dir whose complete shards of the same rollouts are hard-linked, and whose latents of them by the same V copied, not made again (python -m wm iterate: the round before)


@dataclasses.dataclass
class DataConfig:
  obs_sampled_per_rollout: int = 1000  # frames drawn (without replacement) each time a rollout is read
  shuffle_buffer: int = 20000  # frames in the tf.data shuffle buffer
  batch_size: int = 100  # frames per training batch of V


@dataclasses.dataclass
class VaeConfig:
  model: str = 'conv_vae'  # encoder class by name (see wm/models/registry.py)
  z_size: int = 32  # latent size
  kl_tolerance: float = 0.5  # free bits: KL per latent dimension below this costs nothing
  learning_rate: float = 1e-4  # Adam learning rate
  train_steps: int = 3000  # optimizer steps in total (a rerun continues up to this)
  save_every: int = 500  # checkpoint every this many steps
  log_every: int = 100  # write scalars every this many steps
  valid_batches: int = 10  # validation batches per evaluation
  precision: str = 'auto'  # float32 | bfloat16 (convolutions) | auto: bfloat16 where the device has it natively (wm/hardware.py)
  width: float = 1.0  # every layer's channels x this (0.5: a quarter of V's multiply-adds, a cheaper V to act with)


@dataclasses.dataclass
class DistributeConfig:
  strategy: str = 'auto'  # V and M: one_device | mirrored | multi_worker | auto (see wm/distribute.py)
  gpus: int = 0  # mirrored: GPUs of this process to mirror over (0: all it sees)
  cpu_replicas: int = 1  # mirrored without GPUs: split the CPU into this many logical devices
  workers: int = 0  # multi_worker: workers expected (0: as many as srun or TF_CONFIG start)
  port: int = 0  # multi_worker under srun: first port of a node's workers (0: 20000 + job id % 20000)
  collective_timeout_s: float = 600.0  # a collective op waiting longer fails (a worker died); 0: never


@dataclasses.dataclass
class EncodeConfig:
  batch_size: int = 1000  # frames per encoder call


@dataclasses.dataclass
class SeqConfig:
  model: str = 'mdnrnn'  # sequence model class by name (see wm/models/registry.py)
  hidden_size: int = 256  # LSTM units (mdnrnn) or model width (transformer)
  num_mixtures: int = 5  # Gaussians per latent dimension
  sequence_length: int = 100  # steps per training sequence (never crosses a rollout's end)
  batch_size: int = 32  # sequences per batch
  learning_rate: float = 1e-3  # Adam learning rate
  train_steps: int = 2000  # optimizer steps in total (a rerun continues up to this)
  save_every: int = 500  # checkpoint every this many steps
  log_every: int = 100  # write scalars every this many steps
  valid_every: int = 500  # evaluate on the validation split every this many steps (and at the end)
  valid_batches: int = 10  # validation batches per evaluation at most
  grad_clip: float = 1.0  # clip gradients to this global norm (0: no clipping)
  precision: str = 'float32'  # training's matrix products: float32 | bfloat16 (the head's, and the MDN-RNN's outside its compiled loops on a CPU: 1.25x its step with AMX, the same validation loss, controllers not shown to score as well: docs/results.md) | auto (bfloat16 where the device has it natively: wm/hardware.py)
  bucket_steps: int = 0  # 0: every training batch is batch_size x sequence_length steps, padding included | N: windows are batched with others whose length falls in the same N-step bucket, and each batch cut to that bucket's end and its gradient weighted by its real steps: padding not computed (windows longer than most episodes: 1.5-2.4x the real steps/s of Doom's M, docs/benchmarks.md and docs/results.md)
  pack: bool = False  # training rows of sequence_length steps hold windows end to end, M restarting at each (batch_size counts rows): padding not computed, batches as mixed as padded ones (Doom: a row holds ~1.5 windows, docs/benchmarks.md)
  window_start: str = 'random'  # training windows start at a random offset each pass | episode: at t = 0, L, 2L, ... (as dreams start)
  done_weight: float = 1.0  # weight of terminated steps in the done loss (rare ends; the paper's Doom M: 10); the done probability stays calibrated
  dropout: float = 0.0  # while training, drop this share of the features (h) the head reads (0: off; 0.2 did not curb the Doom done head's overfitting: docs/results.md)
  shuffle_buffer: int = 1000  # training windows in the shuffle buffer
  temperature: float = 1.0  # sampling temperature of the mixture
  num_layers: int = 2  # transformer: attention blocks
  num_heads: int = 4  # transformer: attention heads
  judges: int = 0  # more Ms trained on the same latents (seeds seed+1, ...; beside M with --parallelism > 1, else after it) whose worlds also play an equal share of the controller's dream episodes (controller.dream_fitness)
  judge_hidden_size: int = 0  # the judges' hidden_size (0: seq.hidden_size; smaller costs less but judged worse on Doom)
  judge_data: str = 'same'  # what the judges learn from: same (M's training rollouts; worlds differ by their seeds only) | bootstrap (each its own resample of them, every rollout counted a Poisson(1) number of times: worlds that also differ where the data is thin)


@dataclasses.dataclass
class ControllerConfig:
  inputs: str = 'zh'  # controller input: z | zh (the paper's) | zh_hidden (one hidden layer) | zch (the LSTM's cell c too: the paper's Doom C)
  hidden_units: int = 40  # zh_hidden: width of the hidden layer
  rest: str = 'middle'  # a zero output puts one-sided actions (gas, brake) at: middle | low (off)
  discrete: str = 'argmax'  # Discrete actions: argmax (an output each, the largest acts) | line (one output, tanh cut into equal bins: the paper's Doom C)
  line_order: str = ''  # discrete=line: the actions from -1 to 1, e.g. 2,0,1 (TakeCover: left, still, right); empty: 0..n-1
  population_size: int = 16  # CMA-ES candidates per generation
  trials: int = 4  # episodes per candidate; fitness is their mean return
  generations: int = 100  # generations in total (a rerun continues up to this)
  init_sigma: float = 0.1  # CMA-ES initial step size of a search from zeros
  min_sigma: float = 0.0  # CMA-ES floor on each parameter's std (cma's minstd; 0: none): with a few noisy episodes a candidate the step size shrinks long before the search has arrived (docs/results.md)
  start_sigma: float = 0.05  # ... of a search from a controller (start_from, warm_generations): it starts near a good one
  start_from: str = ''  # a run dir whose controller (RUN/controller/best.npz) is the search's first mean instead of zeros: e.g. one evolved in this run's dream, fine-tuned here in the real env (a warm start); it must share this run's V and M
  warm_generations: int = 0  # mode=real: first a search of its own in M's dream, this many generations (RUN/controller/warm), and the real search starts from its best (0: off)
  warm_population: int = 64  # ... its candidates per generation (dream episodes are cheap: a large population ranks them in a noisy world)
  warm_trials: int = 16  # ... its dream episodes per candidate
  warm_keep: str = 'real'  # ... which of its evaluated controllers the real search starts from (as keep: real lets the game stop a search that exploits the dream)
  covariance: str = 'full'  # CMA-ES covariance: full (the paper's) | diagonal (sep-CMA-ES: learns each parameter's scale ~n/3 times faster)
  train_patience: int = 0  # real-env training: stop after this many steps without reward (0: off)
  mode: str = 'dream'  # where candidates are evaluated: dream (inside M) | real (the env)
  dream_generations: int = 0  # mode=real: the first this many generations of the same search evolve in M's dream (a warm start weaker than warm_generations on CarRacing), the rest in the real env
  dream_temperature: float = 1.15  # dream: sampling temperature of M
  dream_done: str = 'sample'  # dream: an episode ends with M's done probability | threshold (> 0.5) | expected (rewards weighted by the probability of being alive: no draw's noise)
  dream_done_odds: float = 1.0  # dream: M's odds of an episode's end times this (> 1: a cautious dream, harder than M predicts; with threshold, an end where M's probability is over 1 / (1 + this))
  dream_precision: str = 'float32'  # dream: M's matrix products in float32 | bfloat16 (1.3x the dream's speed with AMX, not shown to train as well) | auto (bfloat16 where the device computes it natively: wm/hardware.py)
  dream_checkpoints: str = ''  # dream: steps of M's checkpoints (comma-separated, e.g. '1000') whose worlds play an equal share of each candidate's episodes beside the final M's
  dream_judge_runs: str = ''  # dream: run dirs (comma-separated) whose own final M, trained on this run's V (e.g. with another seed), also plays an equal share of the episodes
  dream_dropout: bool = False  # dream: each episode reads M's features through one dropout mask of seq.dropout, drawn at its start and kept (every episode another M; needs seq.dropout > 0)
  dream_fitness: str = 'mean'  # dream: a candidate's fitness: mean (of all its episodes) | worst (the lowest of the Ms' means)
  dream_done_from: str = 'own'  # dream with judges: an episode ends by its own world's M | all (by the likeliest end any M predicts on its steps: every judge steps on every episode too, so a death one M misses, another sees; 1.14x a Doom generation with one judge, docs/benchmarks.md)
  dream_common: bool = False  # dream: a generation's candidates all play the same episodes (start latents, M's noise, the draws of their ends: common random numbers), so they are ranked by their moves more than their luck
  eval_every: int = 25  # every this many generations the best and the centroid are evaluated, in the real env and in the dream
  eval_episodes: int = 16  # ... over this many episodes
  dream_eval_episodes: int = 0  # ... and over this many in the dream (0: eval_episodes); dream episodes cost ~1/100 of real ones, and more give the fidelity and keep=dream's score less noise
  keep: str = 'real'  # which controller best.npz keeps: real (the best real evaluation) | dream (the best dream evaluation: the real game is watched, never used to choose) | final (the newest evaluation's centroid: no world chooses, so no world's noise or blind spots pick it) | average (the mean of the last keep_average generations' centroids: no evaluation chooses) | select (the centroid a second dream, ended by select_done, scores best: a judge other than the fitness)
  keep_average: int = 40  # keep=average (and warm_keep=average): how many of the newest generations' centroids are averaged
  select_every: int = 5  # keep=select: every this many generations (and at the last) the centroid plays the selection dream, and best.npz keeps the one that scored best there
  select_episodes: int = 128  # keep=select: its dream episodes a centroid (the same ones every time: a multiple of the dream's Ms)
  select_done: str = 'threshold'  # keep=select: how the selection dream's episodes end (as dream_done; its Ms, temperature, judges and fitness are the search's)
  select_done_odds: float = 4.0  # keep=select: ... with M's odds of an end times this (as dream_done_odds): on Doom, ends that rank controllers as the game does
  test_episodes: int = 20  # scripts/evaluate.py: episodes (the paper's table used 100)

  def judge_steps(self) -> tuple[int, ...]:
    """dream_checkpoints as steps (a ConfigError for anything but positive integers)."""
    parts = [p.strip() for p in self.dream_checkpoints.split(',') if p.strip()]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
      raise ConfigError(f'config field controller.dream_checkpoints={self.dream_checkpoints!r} '
                        "should be training steps of M, comma-separated (e.g. '1000,1250')")
    return tuple(int(p) for p in parts)

  def judge_runs(self) -> tuple[str, ...]:
    """dream_judge_runs as run dirs."""
    return tuple(p.strip() for p in self.dream_judge_runs.split(',') if p.strip())

  def dream_eval_count(self) -> int:
    """Dream episodes in each evaluation: dream_eval_episodes, or eval_episodes when 0."""
    return self.dream_eval_episodes or self.eval_episodes

  def dream_worlds(self) -> int:
    """How many Ms play a candidate's dream episodes: the final M and these judges (seq.judges
    adds its own)."""
    return 1 + len(self.judge_steps()) + len(self.judge_runs())


@dataclasses.dataclass
class IterateConfig:
  iterations: int = 0  # python -m wm iterate: rounds after the run's own (the paper's iterative training)
  rollouts: int = 100  # rollouts each round adds, played by the previous round's controller (collect.action_noise)
  vae_steps: int = 1000  # V's training steps each round adds, continuing its checkpoint
  seq_steps: int = 1000  # M's training steps each round adds, continuing its checkpoint
  generations: int = 25  # controller generations each round runs (added to round k-1's with search=continue)
  search: str = 'continue'  # each round's CMA-ES: continue (round k-1's state, through the new V and M) | restart (from scratch through them)
  warm_generations: int = 0  # search=restart: each round's real search starts from a dream search of this many generations in the round's own M (controller.warm_*; 0: from zeros)


@dataclasses.dataclass
class PlayConfig:
  num_episodes: int = 1  # episodes to play
  fps: int = 50  # frames per second of recorded videos


@dataclasses.dataclass
class Config:
  preset: str = 'small'  # name of the preset these values came from (informational)
  seed: int = 0  # experiment seed: every random choice derives from it
  env: EnvConfig = dataclasses.field(default_factory=EnvConfig)  # the environment and its frames
  collect: CollectConfig = dataclasses.field(default_factory=CollectConfig)  # stage 1: random-policy rollouts
  records: RecordsConfig = dataclasses.field(default_factory=RecordsConfig)  # stage 2: TFRecord shards
  data: DataConfig = dataclasses.field(default_factory=DataConfig)  # how V reads frames
  vae: VaeConfig = dataclasses.field(default_factory=VaeConfig)  # stage 3: the observation encoder V
  distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)  # V and M over devices and workers
  encode: EncodeConfig = dataclasses.field(default_factory=EncodeConfig)  # stage 4: re-encoding rollouts to latents
  seq: SeqConfig = dataclasses.field(default_factory=SeqConfig)  # stage 5: the sequence model M
  controller: ControllerConfig = dataclasses.field(default_factory=ControllerConfig)  # stage 6: the controller C and CMA-ES
  play: PlayConfig = dataclasses.field(default_factory=PlayConfig)  # stage 7: playing and recording
  iterate: IterateConfig = dataclasses.field(default_factory=IterateConfig)  # rounds of collect with C, retrain, continue C


# ---------------------------------------------------------------------------- loading

# Why not ml_collections' config_flags (DEFINE_config_dataclass / DEFINE_config_file, tried with
# 1.1.0): it reads the string annotations of `from __future__ import annotations` as no type and
# fails (TypeError), and even without them its errors are not ours: an unknown field is a KeyError
# traceback that does not list the section's fields, a bad value says "invalid literal for int()"
# instead of naming the field and its type, and an override before --config is refused. It also
# resolves the config while flags are parsed, before --run_dir is known, so the RUN/config.json
# default and the as-given overrides that snapshots record and the pipeline passes on would still
# need the code below. Keeping ~150 lines beats wrapping a dependency to restore its messages.


def load(spec: str = DEFAULT_CONFIG) -> Config:
  """Loads `path/to/file.py:preset` (the path relative to cwd or to the repository).

  A file may list its presets in `PRESETS`; an unknown one is then refused naming them. A file
  that fails to import, or whose `get_config` fails, is the user's to fix: the ConfigError names
  the file, the line and the exception instead of showing a traceback.
  """
  path, _, preset = spec.partition(':')
  candidates = [path, os.path.join(REPO_ROOT, path)]
  found = next((p for p in candidates if os.path.isfile(p)), None)
  if found is None:
    raise ConfigError(f'config file {path!r} not found (looked in {candidates}); '
                      f'pass --config=PATH.py:PRESET, e.g. --config={DEFAULT_CONFIG}')
  module_spec = importlib.util.spec_from_file_location('_wm_experiment_config', found)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (any error in the user's file)
    raise ConfigError(f'config file {found} failed to import: {_failure(e, found)}') from None
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{found} defines no get_config(preset)')
  presets = getattr(module, 'PRESETS', None)
  if preset and presets is not None and preset not in presets:
    raise ConfigError(f'config file {found} has no preset {preset!r}; its presets: '
                      f'{", ".join(presets)} (e.g. --config={path}:{presets[0]})')
  try:
    config = module.get_config(preset) if preset else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'config file {found}: get_config({preset!r}) failed: '
                      f'{_failure(e, found)}') from None
  if not isinstance(config, Config):
    raise ConfigError(f'{found}: get_config returned {type(config).__name__}, not wm.config.Config')
  return config


def _failure(error: Exception, path: str) -> str:
  """`error` as one line, with the line of `path` it was raised from (if it was)."""
  text = f'{type(error).__name__}: {error}'
  if isinstance(error, SyntaxError) and error.lineno:
    return f'{type(error).__name__}: {error.msg} (line {error.lineno})'
  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f'{text} (line {lines[-1]})' if lines else text


# Fields renamed since a RUN/config.json may have been written: old name -> (new name, new value).
RENAMED = {
    'vae.mixed_precision': ('vae.precision', lambda old: 'bfloat16' if old else 'float32'),
}


def from_dict(data: dict[str, Any], cls: type = Config, where: str = '') -> Any:
  """Builds a config from nested dicts (such as RUN/config.json), refusing unknown fields and
  reading renamed ones (RENAMED) under their new names."""
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for key, value in data.items():
    name = f'{where}{key}'
    if name in RENAMED:
      name, value = RENAMED[name][0], RENAMED[name][1](value)
      key = name.rpartition('.')[2]
    if key not in hints:
      raise ConfigError(_unknown_field_message(name, cls))
    if dataclasses.is_dataclass(hints[key]):
      if not isinstance(value, dict):
        raise ConfigError(f'config field {name} is a section; got {value!r}')
      kwargs[key] = from_dict(value, hints[key], name + '.')
    else:
      kwargs[key] = _coerce(name, hints[key], value)
  return cls(**kwargs)


def shrink_for_tests(c: Config) -> None:
  """Every size made tiny, so each stage runs in seconds on a CPU: the `debug` presets."""
  c.env.max_steps = 40  # episodes of 40 steps
  c.collect.num_rollouts = 6
  c.records.shard_size_mb = 0.05  # several tiny shards, to exercise sharding
  c.records.valid_fraction = 0.2
  c.data.obs_sampled_per_rollout = 16
  c.data.shuffle_buffer = 64
  c.data.batch_size = 16
  c.vae.z_size = 8
  c.vae.train_steps = 20
  c.vae.save_every = 10
  c.vae.log_every = 5
  c.vae.valid_batches = 2
  c.encode.batch_size = 64
  c.seq.hidden_size = 16
  c.seq.num_mixtures = 2
  c.seq.sequence_length = 10
  c.seq.batch_size = 4
  c.seq.train_steps = 20
  c.seq.save_every = 10
  c.seq.log_every = 5
  c.seq.valid_every = 10
  c.seq.valid_batches = 2
  c.seq.shuffle_buffer = 64
  c.seq.num_layers = 1
  c.seq.num_heads = 2
  c.controller.population_size = 4
  c.controller.trials = 1
  c.controller.generations = 2
  c.controller.eval_every = 1
  c.controller.eval_episodes = 1
  c.controller.test_episodes = 4


def to_dict(config: Config) -> dict[str, Any]:
  return dataclasses.asdict(config)


def to_json(config: Config) -> str:
  return json.dumps(to_dict(config), indent=2, sort_keys=False)


def load_json(path: str, fix: str = 'restore it or choose a config with --config=FILE:PRESET'
              ) -> Config:
  """Reads a config saved by `to_json` (RUN/config.json); a ConfigError names `path` and `fix`."""
  try:
    with open(path) as f:
      data = json.load(f)
  except OSError as e:
    raise ConfigError(f'cannot read {path}: {e.strerror}; {fix}') from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ConfigError(f'{path} is not valid JSON ({e}): {fix}') from None
  if not isinstance(data, dict):
    raise ConfigError(f'{path} holds a JSON {type(data).__name__}, not a config: {fix}')
  try:
    return from_dict(data)
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}; {fix}') from None


# ---------------------------------------------------------------------------- overrides


def override(config: Config, dotted: str, value: Any) -> None:
  """Sets `dotted` (e.g. 'vae.learning_rate') to `value`, parsing strings by the field's type."""
  parts = dotted.split('.')
  node = config
  for i, part in enumerate(parts):
    where = '.'.join(parts[:i + 1])
    fields = {f.name: f for f in dataclasses.fields(node)}
    if part not in fields:
      raise ConfigError(_unknown_field_message(where, type(node)))
    if i == len(parts) - 1:
      hint = typing.get_type_hints(type(node))[part]
      if dataclasses.is_dataclass(hint):
        raise ConfigError(f'config field {where} is a section; override one of its fields, '
                          f'e.g. --config.{where}.{dataclasses.fields(hint)[0].name}=...')
      setattr(node, part, _coerce(where, hint, value))
    else:
      node = getattr(node, part)


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
  for dotted, value in overrides.items():
    override(config, dotted, value)
  return config


def _unknown_field_message(name: str, cls: type) -> str:
  known = ', '.join(f.name for f in dataclasses.fields(cls))
  return f'unknown config field {name!r}; {cls.__name__} has: {known}'


_TRUE = {'true', '1', 'yes', 'on'}
_FALSE = {'false', '0', 'no', 'off'}


def _coerce(name: str, hint: Any, value: Any) -> Any:
  """Converts `value` to the field's type or raises a ConfigError naming the field."""
  try:
    if hint is bool:
      if isinstance(value, bool):
        return value
      if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    elif hint is int:
      if isinstance(value, bool):
        raise ValueError
      if isinstance(value, int):
        return value
      if isinstance(value, str):
        return int(value)
    elif hint is float:
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
      if isinstance(value, str):
        return float(value)
    elif hint is str:
      if isinstance(value, str):
        return value
  except ValueError:
    pass
  raise ConfigError(f'config field {name} expects {getattr(hint, "__name__", hint)}, '
                    f'got {value!r}')


# gym.make arguments a config field already sets: env.make_kwargs may not set them again.
_MADE_BY_FIELDS = {'max_episode_steps': 'env.max_steps', 'render_mode': 'the stage itself',
                   'domain_randomize': 'env.domain_randomize',
                   'render_scale': 'env.render_scale'}


def parse_make_kwargs(text: str) -> dict[str, Any]:
  """'key=value,key=value' -> {key: value}: a value is a Python literal when it reads as one
  (1, 0.5, True, (1, 2), 'text'), else the text itself (RES_160X120). Items are split at commas
  that start a new `key=`, so a tuple's commas stay in its value."""
  field = 'config field env.make_kwargs'
  kwargs: dict[str, Any] = {}
  for item in _split_items(text):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or not key.isidentifier():
      raise ConfigError(f'{field}={text!r}: {item!r} is not key=value (write '
                        '--config.env.make_kwargs=key=value,key2=value2)')
    if key in kwargs:
      raise ConfigError(f'{field}={text!r} sets {key} twice')
    if key in _MADE_BY_FIELDS:
      raise ConfigError(f'{field}={text!r}: {key} is set by {_MADE_BY_FIELDS[key]}, not here')
    try:
      kwargs[key] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
      kwargs[key] = value.strip()
  return kwargs


def _split_items(text: str) -> list[str]:
  items: list[str] = []
  for part in text.split(','):
    if not part.strip():
      continue
    if items and not ('=' in part and part.partition('=')[0].strip().isidentifier()):
      items[-1] += ',' + part  # a comma inside the value before it
    else:
      items.append(part)
  return items


# ---------------------------------------------------------------------------- validation

_CHOICES = {
    'collect.policy': ('uniform', 'brownian', 'held', 'controller'),
    'controller.inputs': ('z', 'zh', 'zh_hidden', 'zch'),
    'controller.rest': ('middle', 'low'),
    'controller.discrete': ('argmax', 'line'),
    'controller.covariance': ('full', 'diagonal'),
    'controller.mode': ('real', 'dream'),
    'controller.keep': ('real', 'dream', 'final', 'average', 'select'),
    'controller.warm_keep': ('real', 'dream', 'final', 'average', 'select'),
    'controller.dream_done': ('sample', 'threshold', 'expected'),
    'controller.select_done': ('sample', 'threshold', 'expected'),
    'controller.dream_fitness': ('mean', 'worst'),
    'controller.dream_done_from': ('own', 'all'),
    'controller.dream_precision': ('auto', 'float32', 'bfloat16'),
    'iterate.search': ('continue', 'restart'),
    'seq.window_start': ('random', 'episode'),
    'seq.judge_data': ('same', 'bootstrap'),
    'vae.precision': ('auto', 'float32', 'bfloat16'),
    'seq.precision': ('auto', 'float32', 'bfloat16'),
    'distribute.strategy': ('auto', 'one_device', 'mirrored', 'multi_worker'),
}
_POSITIVE = (
    'env.max_steps', 'env.action_repeat', 'env.frame_size', 'collect.num_rollouts',
    'collect.hold_min',
    'records.shard_size_mb', 'data.obs_sampled_per_rollout', 'data.shuffle_buffer',
    'data.batch_size', 'vae.z_size', 'vae.width', 'vae.learning_rate', 'vae.train_steps',
    'vae.save_every', 'vae.log_every', 'vae.valid_batches', 'encode.batch_size', 'seq.hidden_size',
    'seq.num_mixtures', 'seq.sequence_length', 'seq.batch_size', 'seq.learning_rate',
    'seq.train_steps', 'seq.save_every', 'seq.log_every', 'seq.valid_every', 'seq.valid_batches',
    'seq.shuffle_buffer', 'seq.temperature', 'seq.num_layers', 'seq.done_weight',
    'seq.num_heads', 'controller.dream_done_odds', 'controller.hidden_units',
    'controller.population_size',
    'controller.trials', 'controller.generations', 'controller.init_sigma',
    'controller.start_sigma', 'controller.warm_population', 'controller.warm_trials',
    'controller.keep_average', 'controller.select_every', 'controller.select_episodes',
    'controller.select_done_odds',
    'controller.dream_temperature', 'controller.eval_every', 'controller.eval_episodes',
    'controller.test_episodes',
    'play.num_episodes', 'play.fps',
)


def get(config: Config, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    node = getattr(node, part)
  return node


def validate(config: Config) -> Config:
  """Refuses impossible values with a message naming the field and the allowed range.

  env.name must be a gymnasium id with pixels, and the environment must take env.make_kwargs, so
  a stage refuses a mistyped environment or argument before it writes anything rather than when
  it first makes the environment.
  """
  for name, allowed in _CHOICES.items():
    if get(config, name) not in allowed:
      raise ConfigError(f'config field {name}={get(config, name)!r} is not one of {allowed}')
  for name in _POSITIVE:
    if not get(config, name) > 0:
      raise ConfigError(f'config field {name} must be > 0, got {get(config, name)!r}')
  for name, ok, requirement in _range_checks(config):
    if not ok:
      raise ConfigError(f'config field {name}={get(config, name)!r} {requirement}')
  config.env.gym_kwargs()  # a ConfigError naming a malformed item
  from wm import envs  # pylint: disable=import-outside-toplevel  (wm/envs.py imports this module)
  envs.spec_for(config.env.name)  # a ConfigError naming the registered environments
  envs.check_make_kwargs(config.env)  # ... or an argument the environment does not take
  return config


def _range_checks(config: Config) -> list[tuple[str, bool, str]]:
  """(field, whether its value is allowed, what is) for the fields with a rule of their own."""
  worlds = config.controller.dream_worlds() + max(config.seq.judges, 0)  # < 0 refused below
  return [
      ('collect.hold_max', config.collect.hold_max >= config.collect.hold_min,
       f'must be >= collect.hold_min ({config.collect.hold_min})'),
      ('collect.brownian_sigma', config.collect.brownian_sigma >= 0, 'must be >= 0'),
      ('collect.compress_level', 0 <= config.collect.compress_level <= 9, 'must be in 0..9'),
      ('collect.controller_run', config.collect.policy != 'controller'
       or bool(config.collect.controller_run), 'must name a run dir with a trained controller '
       'when collect.policy=controller'),
      ('collect.action_noise', config.collect.action_noise >= 0, 'must be >= 0'),
      ('iterate.iterations', config.iterate.iterations >= 0, 'must be >= 0'),
      ('iterate.rollouts', config.iterate.rollouts >= 1, 'must be >= 1'),
      ('iterate.vae_steps', config.iterate.vae_steps >= 0, 'must be >= 0'),
      ('iterate.seq_steps', config.iterate.seq_steps >= 0, 'must be >= 0'),
      ('iterate.generations', config.iterate.generations >= 1, 'must be >= 1'),
      ('iterate.warm_generations', config.iterate.warm_generations >= 0, 'must be >= 0'),
      ('iterate.warm_generations', config.iterate.warm_generations == 0
       or config.iterate.search == 'restart', 'needs iterate.search=restart: a warm start '
       'begins a new search, it does not continue round k-1\'s'),
      ('records.valid_fraction', 0 <= config.records.valid_fraction < 1, 'must be in [0, 1)'),
      ('records.compress_level', 0 <= config.records.compress_level <= 9, 'must be in 0..9'),
      ('env.render_scale', 0 < config.env.render_scale <= 1, 'must be in (0, 1]'),
      ('env.render_scale', config.env.render_scale == 1 or config.env.fast_render,
       'needs env.fast_render=True (the scaled drawing is part of the fast renderer)'),
      ('vae.kl_tolerance', config.vae.kl_tolerance >= 0, 'must be >= 0'),
      ('controller.train_patience', config.controller.train_patience >= 0, 'must be >= 0'),
      ('controller.min_sigma', config.controller.min_sigma >= 0, 'must be >= 0'),
      ('controller.dream_generations', config.controller.dream_generations >= 0, 'must be >= 0'),
      ('controller.dream_eval_episodes', config.controller.dream_eval_episodes >= 0,
       'must be >= 0 (0: controller.eval_episodes)'),
      ('controller.trials', config.controller.trials % worlds == 0
       and config.controller.dream_eval_count() % worlds == 0,
       f'and the dream\'s evaluation episodes ({config.controller.dream_eval_count()}: '
       'controller.dream_eval_episodes, or controller.eval_episodes when 0) must be multiples of '
       f'{worlds}: the final M, controller.dream_checkpoints '
       f'({config.controller.dream_checkpoints!r}), controller.dream_judge_runs '
       f'({config.controller.dream_judge_runs!r}) and seq.judges ({config.seq.judges}) play '
       'equal shares of the dream episodes'),
      ('controller.select_episodes', config.controller.select_episodes % worlds == 0 or (
          'select' not in (config.controller.keep, config.controller.warm_generations
                           and config.controller.warm_keep)),
       f'must be a multiple of {worlds}, as controller.trials: every M of the dream plays an '
       'equal share of a centroid\'s episodes'),
      ('seq.judges', config.seq.judges >= 0, 'must be >= 0'),
      ('seq.bucket_steps', 0 <= config.seq.bucket_steps <= config.seq.sequence_length,
       f'must be in 0..seq.sequence_length ({config.seq.sequence_length}); 0: no buckets'),
      ('seq.pack', not (config.seq.pack and config.seq.bucket_steps),
       f'cannot be combined with seq.bucket_steps ({config.seq.bucket_steps}): both remove the '
       'padding, one by packing windows into rows, the other by batching them by length; set one'),
      ('seq.dropout', 0.0 <= config.seq.dropout < 1.0, 'must be in [0, 1)'),
      ('controller.dream_done_from', config.controller.dream_done_from == 'own' or worlds > 1,
       'all needs judges (seq.judges, controller.dream_checkpoints or '
       'controller.dream_judge_runs): with M alone every episode ends by its own M already'),
      ('controller.dream_done_from', config.controller.dream_done_from == 'own' or (
          not config.controller.dream_dropout),
       'all cannot be combined with controller.dream_dropout (a judge\'s masks are drawn for '
       'its own episodes only): set one of them off'),
      ('controller.dream_dropout', not config.controller.dream_dropout or config.seq.dropout > 0,
       'needs an M trained with dropout: set seq.dropout > 0 (its rate is the masks\' rate)'),
      ('seq.judge_hidden_size', config.seq.judge_hidden_size >= 0,
       'must be >= 0 (0: seq.hidden_size)'),
      ('controller.dream_generations', config.controller.dream_generations == 0
       or config.controller.mode == 'real', 'is a warm start for controller.mode=real (with '
       'mode=dream every generation is in the dream already)'),
      ('controller.warm_generations', config.controller.warm_generations >= 0, 'must be >= 0'),
      ('controller.warm_generations', config.controller.warm_generations == 0
       or config.controller.mode == 'real', 'is a warm start for controller.mode=real (with '
       'mode=dream the search is in the dream already)'),
      ('controller.warm_generations', config.controller.warm_generations == 0 or not (
          config.controller.start_from or config.controller.dream_generations),
       'cannot be combined with controller.start_from or controller.dream_generations: each is '
       'a warm start of its own, choose one'),
      ('controller.warm_trials', config.controller.warm_generations == 0
       or config.controller.warm_trials % worlds == 0,
       f'must be a multiple of {worlds}, as controller.trials: every M of the dream plays an '
       'equal share of a candidate\'s episodes'),
      ('vae.model', config.vae.model in registry.ENCODERS,
       f'is not a registered encoder {sorted(registry.ENCODERS)} (wm/models/registry.py)'),
      ('seq.model', config.seq.model in registry.SEQUENCE_MODELS,
       f'is not a registered sequence model {sorted(registry.SEQUENCE_MODELS)} '
       '(wm/models/registry.py)'),
      ('seq.grad_clip', config.seq.grad_clip >= 0, 'must be >= 0'),
      ('distribute.gpus', config.distribute.gpus >= 0, 'must be >= 0'),
      ('distribute.cpu_replicas', config.distribute.cpu_replicas >= 1, 'must be >= 1'),
      ('distribute.workers', config.distribute.workers >= 0, 'must be >= 0'),
      ('distribute.port', 0 <= config.distribute.port < 65536, 'must be in 0..65535'),
      ('distribute.collective_timeout_s', config.distribute.collective_timeout_s >= 0,
       'must be >= 0'),
  ]


# ---------------------------------------------------------------------------- listing


@dataclasses.dataclass
class Field:
  """One config field as `python -m wm config` lists it."""
  name: str  # dotted, e.g. 'env.action_repeat'
  value: Any
  default: Any  # of wm/config.py's dataclasses
  type: str  # int | float | str | bool
  meaning: str  # the one-line comment after the field in this file


@functools.lru_cache(maxsize=None)
def meanings() -> dict[str, dict[str, str]]:
  """{class name: {field: its comment}}, read from this file's source: the comment on the line
  where a field's annotated assignment ends."""
  with open(__file__, encoding='utf-8') as f:
    source = f.read()
  comments = {token.start[0]: token.string.lstrip('#').strip()
              for token in tokenize.generate_tokens(io.StringIO(source).readline)
              if token.type == tokenize.COMMENT}
  found = {}
  for node in ast.parse(source).body:
    if isinstance(node, ast.ClassDef):
      found[node.name] = {item.target.id: comments.get(item.end_lineno, '')
                          for item in node.body
                          if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
  return found


def fields(config: Config, default: Any = None, prefix: str = '') -> list[Field]:
  """Every leaf field of `config` in schema order, beside its default and meaning."""
  default = type(config)() if default is None else default
  hints = typing.get_type_hints(type(config))
  notes = meanings().get(type(config).__name__, {})
  rows = []
  for field in dataclasses.fields(config):
    value, base = getattr(config, field.name), getattr(default, field.name)
    if dataclasses.is_dataclass(value):
      rows += fields(value, base, f'{prefix}{field.name}.')
    else:
      rows.append(Field(prefix + field.name, value, base, hints[field.name].__name__,
                        notes.get(field.name, '')))
  return rows


def changed(config: Config) -> list[Field]:
  """The fields whose value differs from wm/config.py's default."""
  return [f for f in fields(config) if f.value != f.default]


def show(value: Any) -> str:
  """A value as a --config.a.b=VALUE override would give it."""
  return str(value)


def listing(config: Config, overrides: dict[str, str], only_changed: bool = False) -> str:
  """A table of `config`'s fields (field, value, default, type, meaning), each marked `*` when it
  differs from wm/config.py's default, `+` when `overrides` set it; only those if `only_changed`."""
  rows = []
  for f in fields(config):
    mark = '+' if f.name in overrides else '*' if f.value != f.default else ''
    if mark or not only_changed:
      rows.append((mark, f.name, show(f.value), show(f.default), f.type, f.meaning))
  header = ('', 'field', 'value', 'default', 'type', 'meaning')
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
  lines = [' '.join(cell.ljust(width) for cell, width in zip(row, widths)) + ' ' + row[-1]
           for row in [header, *rows]]
  marked = sum(1 for row in rows if row[0])
  lines.append(f'{marked} of {len(fields(config))} fields changed: * by the preset (not '
               'wm/config.py\'s default), + by a --config.a.b=v override')
  return '\n'.join(line.rstrip() for line in lines)
