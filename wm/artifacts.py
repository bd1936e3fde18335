"""A run's trained artifacts: where they live, how they are loaded, and what is checked.

    RUN/vae/export/              V, the encoder (wm/models/export.py format)
    RUN/seq/export/              M, the sequence model
    RUN/seq/initial_latents.npz  mu, logvar [N, Z] of training rollouts' first frames (dreams)
    RUN/controller/best.npz      C's parameters and variant (read without pickle)

Every reader goes through here: `load_models` (V and M, checked to fit each other and to have
been made from each other's latents), `StartLatents`, `load_params` / `save_params`, and the
`require_*` checks that name what is missing or mismatched before TensorFlow is even imported.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Any

import numpy as np

from wm.errors import ConfigError, DataError
from wm.infra import fileio, runs

INITIAL_LATENTS = 'initial_latents.npz'
BEST = 'best.npz'


def vae_export(run: runs.Run) -> str:
  return os.path.join(run.stage_dir('vae'), 'export')


def seq_export(run: runs.Run) -> str:
  return os.path.join(run.stage_dir('seq'), 'export')


def initial_latents_path(run: runs.Run) -> str:
  return os.path.join(run.stage_dir('seq'), INITIAL_LATENTS)


def controller_params_path(run: runs.Run) -> str:
  return os.path.join(run.stage_dir('controller'), BEST)


# ---------------------------------------------------------------------------- presence


def require_stage(run: runs.Run, stage: str, path: str, what: str) -> str:
  """`path` if it exists, else a DataError naming the stage that makes it."""
  if not os.path.exists(path):
    raise DataError(f'{run.root} has no {what} ({path} is missing): run the {stage!r} stage '
                    f'first (python -m wm --run_dir={run.root} --stages={stage}, or its '
                    f'script in scripts/)')
  return path


def require_shards(run: runs.Run, stage: str, split: str = 'train') -> str:
  """RUN/records/<split> (stage 'shard') or RUN/encoded/<split> (stage 'encode'), checked to hold
  the manifest.json its stage writes last (before TensorFlow is even imported)."""
  folder = run.split_dir(stage, split)
  what = {'shard': 'sharded rollouts', 'encode': 'encoded rollouts'}[stage]
  require_stage(run, stage, os.path.join(folder, runs.MANIFEST), f'{what} of the {split} split')
  return folder


def require_vae(run: runs.Run) -> str:
  """V's export folder, checked to exist (before TensorFlow is even imported)."""
  require_stage(run, 'vae', os.path.join(vae_export(run), 'model.json'), 'trained V (VAE)')
  return vae_export(run)


def require_world_model(run: runs.Run) -> tuple[str, str]:
  """The export folders of V and M, refused (before TensorFlow is even imported) when either is
  missing or M learned the latents of another V (wm/infra/runs.py stale_reason)."""
  vae_dir, seq_dir = require_vae(run), seq_export(run)
  require_stage(run, 'seq', os.path.join(seq_dir, 'model.json'), 'trained M (sequence model)')
  for stage in ('encode', 'seq'):  # M learned the latents of this V?
    reason = run.stale_reason(stage)
    if reason:
      raise DataError(f'V in {vae_dir} and M in {seq_dir} do not fit each other: {reason}. '
                      'Rerun the encode stage, then train M afresh (move RUN/seq away), or '
                      'restore the earlier V')
  return vae_dir, seq_dir


def require_controller(run: runs.Run) -> str:
  return require_stage(run, 'controller', controller_params_path(run), 'trained controller (C)')


def require_start_run(run: runs.Run, source: str) -> runs.Run:
  """controller.start_from's run dir, checked to have searched through this run's V and M (the
  same results, e.g. linked): through others its controller's parameters mean something else."""
  if not os.path.isdir(source):
    raise ConfigError(f'controller.start_from={source!r} is not a folder: give a run dir whose '
                      'controller stage finished on this run\'s V and M')
  other = runs.Run(source)
  for stage in ('vae', 'seq'):
    mine, theirs = run.fingerprint(stage), other.fingerprint(stage)
    if mine != theirs:
      raise DataError(f'controller.start_from={source!r} searched through another {stage} '
                      f'result than this run\'s ({other.stage_dir(stage)}: {theirs}; '
                      f'{run.stage_dir(stage)}: {mine}): start from a run that shares this '
                      f'run\'s V and M (link RUN/vae and RUN/seq into it), or leave '
                      'controller.start_from empty')
  return other


# ---------------------------------------------------------------------------- V and M


@dataclasses.dataclass
class Models:
  encoder: Any  # wm.models.base.ObservationEncoder (V)
  seq: Any  # wm.models.base.SequenceModel (M)


def load_models(run: runs.Run) -> Models:
  """V and M exported by their stages, refused when they do not fit each other: another latent
  size, or an M trained on the latents of another V (require_world_model)."""
  vae_dir, seq_dir = require_world_model(run)
  from wm.models import export  # pylint: disable=import-outside-toplevel
  encoder = export.load(vae_dir, 'encoder')
  seq = export.load(seq_dir, 'sequence_model')
  if seq.z_size != encoder.z_size:
    raise DataError(f'M in {seq_dir} takes z of size {seq.z_size} but V in {vae_dir} makes '
                    f'{encoder.z_size}: retrain M on this V (rerun encode and seq stages)')
  return Models(encoder, seq)


def seq_checkpoint(run: runs.Run, step: int) -> str:
  """The prefix of M's resume checkpoint at `step` (RUN/seq/checkpoints/ckpt-STEP)."""
  return os.path.join(run.stage_dir('seq'), 'checkpoints', f'ckpt-{step}')


def load_seq_checkpoint(run: runs.Run, step: int):
  """M as it was at training step `step`: the exported M's architecture with the weights of its
  resume checkpoint (the seq stage keeps its newest 3, one every seq.save_every steps)."""
  prefix = seq_checkpoint(run, step)
  if not os.path.exists(prefix + '.index'):
    folder = os.path.dirname(prefix)
    kept = sorted(int(name[5:-6]) for name in (os.listdir(folder) if os.path.isdir(folder)
                                               else ())
                  if name.startswith('ckpt-') and name.endswith('.index'))
    raise DataError(f'{run.root} has no checkpoint of M at step {step} ({prefix}.index is '
                    f'missing; kept: {kept or "none"}): choose controller.dream_checkpoints among '
                    'those, or retrain M with a seq.save_every that saves that step')
  from wm.models import export  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  model, info = export.build(seq_export(run), 'sequence_model')
  try:
    tf.train.Checkpoint(model=model).read(prefix).expect_partial().assert_existing_objects_matched()
  except (ValueError, AssertionError, tf.errors.OpError) as e:
    raise DataError(f'checkpoint {prefix} does not fit the exported M {info["name"]}'
                    f'({info["kwargs"]}): {str(e).splitlines()[0][:300]}') from None
  return model


def seq_judge_run(run: runs.Run, index: int) -> runs.Run:
  """The run as judge `index` (1, 2, ...) of seq.judges sees it: M's folder is
  RUN/seq/judges/<index>, every other stage's is the run's own."""
  return run.redirected('seq', os.path.join(run.stage_dir('seq'), runs.JUDGES, str(index)))


JUDGE_DATA = 'judge_data.json'  # in a judge's folder: the seq.judge_data its training started on


def require_judge_data(judge: runs.Run, wanted: str) -> None:
  """Refuses (before TensorFlow is even imported) judge M in `judge`'s seq folder
  (seq_judge_run) when it was trained (its DONE) or started (JUDGE_DATA) on other data than
  seq.judge_data=`wanted`: it would be kept as it is, or continued on a mix of both."""
  folder = judge.stage_dir('seq')
  if judge.is_done('seq'):
    try:
      trained = fileio.read_json(judge.done_path('seq')).get('data', 'same')
    except (OSError, ValueError, AttributeError):
      trained = None  # unreadable: not finished, so trained anew below
    if trained is not None and trained != wanted:
      raise ConfigError(f'{folder} was trained with seq.judge_data={trained} (its DONE), this '
                        f'config says {wanted}: remove that folder to train the judge anew, or '
                        f'set --config.seq.judge_data={trained}')
    if trained is not None:
      return
  path = os.path.join(folder, JUDGE_DATA)
  if not os.path.exists(path):
    return
  try:
    started = fileio.read_json(path)['data']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f'{path} is unreadable ({e}): it records what the judge in {folder} '
                    'learns from; remove that folder to train the judge anew') from e
  if started != wanted:
    raise ConfigError(f'{folder} started training with seq.judge_data={started} ({path}), this '
                      f'config says {wanted}: remove that folder to train the judge anew, or set '
                      f'--config.seq.judge_data={started} to finish it')


def load_seq_judge(run: runs.Run, index: int):
  """The final M of seq.judges' judge `index`, checked to have learned this run's latents."""
  judge = seq_judge_run(run, index)
  if not judge.is_done('seq'):
    raise DataError(f'seq.judges asks for judge M {index} but {judge.stage_dir("seq")} holds no '
                    'finished one: rerun the seq stage (it trains the judges after M), or lower '
                    'seq.judges')
  return load_models(judge).seq


def load_judge_seq(run: runs.Run, judge_root: str):
  """The final M of run dir `judge_root`, which must have learned the latents of `run`'s V
  (the same V's result, e.g. linked into a copy of the run that trained M with another seed)."""
  judge = runs.Run(judge_root)
  if not os.path.isdir(judge_root):
    raise DataError(f'controller.dream_judge_runs names {judge_root}, which is not a folder: '
                    'give run dirs whose seq stage trained an M on this run\'s V')
  models = load_models(judge)  # its V and M fit each other (or a DataError says how not)
  mine, theirs = run.fingerprint('vae'), judge.fingerprint('vae')
  if mine != theirs:
    raise DataError(f'the judge M in {seq_export(judge)} learned the latents of another V than '
                    f'this run\'s ({vae_export(judge)}: result {theirs}; {vae_export(run)}: '
                    f'{mine}): train the judge on this run\'s V (link RUN/vae, RUN/encoded into '
                    'its run dir), or leave it out of controller.dream_judge_runs')
  return models.seq


class StartLatents:
  """First latents to start dreams from: rows of `mu`/`logvar` (sampled), or of `z`."""

  def __init__(self, path: str, z_size: int):
    if not os.path.exists(path):
      raise DataError(f'{path} is missing: the sequence model stage writes the first latents '
                      'that dreams start from; rerun scripts/train_sequence_model.py')
    try:
      with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k].astype(np.float32) for k in data.files if k in ('mu', 'logvar', 'z')}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
      raise DataError(f'{path} is truncated or corrupted ({type(e).__name__}: {e}); rerun '
                      'the sequence model stage') from None
    self.mu = arrays.get('mu', arrays.get('z'))
    self.logvar = arrays.get('logvar', np.full_like(self.mu, -np.inf) if self.mu is not None
                             else None)
    if self.mu is None or self.mu.ndim != 2 or self.mu.shape[1] != z_size or not len(self.mu):
      raise DataError(f'{path} should hold mu and logvar (or z) of shape [N, {z_size}], found '
                      f'{ {k: v.shape for k, v in arrays.items()} }')

  @classmethod
  def of_run(cls, run: runs.Run, z_size: int) -> 'StartLatents':
    return cls(initial_latents_path(run), z_size)

  def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` latents z ~ N(mu, sigma) of randomly chosen first frames."""
    rows = rng.integers(len(self.mu), size=count)
    noise = rng.standard_normal(self.mu[rows].shape).astype(np.float32)
    return self.mu[rows] + np.exp(0.5 * self.logvar[rows]) * noise


# ---------------------------------------------------------------------------- C's parameters


def save_params(path: str, params: np.ndarray, controller, **extra: float) -> None:
  """Writes a controller's parameters and its variant (`inputs`, `rest`, how Discrete actions are
  read) atomically."""
  with fileio.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, params=np.asarray(params, np.float64), inputs=np.str_(controller.inputs),
               rest=np.str_(controller.rest), discrete=np.str_(controller.discrete_output),
               line_order=np.asarray(controller.line_order, np.int64),
               num_params=np.int64(controller.num_params),
               **{k: np.float64(v) for k, v in extra.items()})


def describe_discrete(discrete: str, line_order: tuple[int, ...]) -> str:
  return f'discrete={discrete}' + (f' line_order={",".join(map(str, line_order))}'
                                   if line_order else '')


def load_params(path: str, controller) -> np.ndarray:
  """The parameters in `path`, refused unless they fit `controller` (wm.models.controller)."""
  if not os.path.exists(path):
    raise DataError(f'no controller parameters at {path}; train the controller first '
                    '(scripts/train_controller.py) or pass --policy=random')
  try:
    with np.load(path, allow_pickle=False) as data:
      params, inputs = data['params'], str(data['inputs'])
      rest = str(data['rest']) if 'rest' in data.files else 'middle'
      discrete = str(data['discrete']) if 'discrete' in data.files else 'argmax'
      line_order = tuple(int(i) for i in data['line_order']) if 'line_order' in data.files else ()
  except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f'{path} is not a controller parameter file ({type(e).__name__}: {e})') from None
  if inputs != controller.inputs or params.shape != (controller.num_params,):
    raise DataError(f'{path} holds a controller.inputs={inputs!r} controller with '
                    f'{params.shape} parameters; the config wants inputs='
                    f'{controller.inputs!r} with {controller.num_params}: fix --config.controller')
  if rest != controller.rest:
    raise DataError(f'{path} was trained with controller.rest={rest!r}, the config says '
                    f'{controller.rest!r}: its actions would differ; fix --config.controller.rest')
  wanted = (controller.discrete_output, controller.line_order)
  if controller.discrete and (discrete, line_order) != wanted:
    raise DataError(f'{path} reads Discrete actions as {describe_discrete(discrete, line_order)}, '
                    f'the config as {describe_discrete(*wanted)}: its actions would differ; fix '
                    '--config.controller.discrete / line_order')
  return params
