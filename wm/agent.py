"""The agent: V, M and C together, stepping a batch of environments in one fused TF call.

`WorldModel.load(run, config)` rebuilds V (RUN/vae/export) and M (RUN/seq/export) and checks that
they fit each other and the environment. `WorldModel.step(frames, state, params)` is one compiled
`tf.function`: encode the frames, act with each row's controller parameters on (mu, h), advance
M with that action. `Agent` wraps it as a `wm.policies.Policy` for one environment, so the
collector, evaluate.py and play can use a trained controller; its `info` carries z (mu, logvar),
h, M's prediction for the next step and the action, which play's panels draw.

Controller parameters live in an .npz (RUN/controller/best.npz): `params` [num_params] and the
variant (`inputs`, `hidden_units`), read without pickle.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Any

import numpy as np
import tensorflow as tf

from wm import envs, fileio, runs
from wm.config import Config
from wm.errors import DataError
from wm.models import export
from wm.models.controller import Controller
from wm.policies import Policy, PolicyStep


def export_dirs(run: runs.Run) -> tuple[str, str]:
  return (os.path.join(run.stage_dir('vae'), 'export'),
          os.path.join(run.stage_dir('seq'), 'export'))


class WorldModel:
  """V + M + the controller's shape; `step` runs all three for a batch of environments."""

  def __init__(self, encoder: Any, seq: Any, controller: Controller):
    self.encoder, self.seq, self.controller = encoder, seq, controller
    self.step = tf.function(self._step, reduce_retracing=True)

  @classmethod
  def load(cls, run: runs.Run, config: Config, action_space=None) -> 'WorldModel':
    vae_dir, seq_dir = export_dirs(run)
    for stage in ('encode', 'seq'):  # M learned the latents of this V?
      reason = run.stale_reason(stage)
      if reason:
        raise DataError(f'V in {vae_dir} and M in {seq_dir} do not fit each other: {reason}. '
                        'Rerun the encode stage, then train M afresh (move RUN/seq away), or '
                        'restore the earlier V')
    encoder = export.load(vae_dir, 'encoder')
    seq = export.load(seq_dir, 'sequence_model')
    if action_space is None:
      action_space = action_space_of(config)
    action_size = envs.action_size(action_space)
    if seq.z_size != encoder.z_size:
      raise DataError(f'M in {seq_dir} takes z of size {seq.z_size} but V in {vae_dir} makes '
                      f'{encoder.z_size}: retrain M on this V (rerun encode and seq stages)')
    if seq.action_size != action_size:
      raise DataError(f'M in {seq_dir} takes actions of size {seq.action_size}, the environment '
                      f'{config.env.name} has {action_size}: wrong run dir or env.name?')
    controller = Controller.from_config(config.controller, encoder.z_size, seq.feature_size,
                                        action_space)
    return cls(encoder, seq, controller)

  def _step(self, frames: tf.Tensor, state: Any, params: tf.Tensor):
    mu, logvar = self.encoder.encode(frames)
    mu, logvar = tf.cast(mu, tf.float32), tf.cast(logvar, tf.float32)
    h = tf.cast(self.seq.features(state), tf.float32)
    action = self.controller(params, mu, h)
    prediction, state = self.seq.step(mu, action, state)
    fields = {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}
    return {'mu': mu, 'logvar': logvar, 'h': h, 'action': action, 'prediction': fields}, state


def action_space_of(config: Config):
  """The environment's action space (the env is made but never reset: cheap)."""
  env = envs.make(config.env)
  try:
    return env.action_space
  finally:
    env.close()


# ---------------------------------------------------------------------------- parameter files


def save_params(path: str, params: np.ndarray, controller: Controller, **extra: float) -> None:
  with fileio.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, params=np.asarray(params, np.float64), inputs=np.str_(controller.inputs),
               rest=np.str_(controller.rest),
               num_params=np.int64(controller.num_params),
               **{k: np.float64(v) for k, v in extra.items()})


def load_params(path: str, controller: Controller) -> np.ndarray:
  if not os.path.exists(path):
    raise DataError(f'no controller parameters at {path}; train the controller first '
                    '(scripts/train_controller.py) or pass --policy=random')
  try:
    with np.load(path, allow_pickle=False) as data:
      params, inputs = data['params'], str(data['inputs'])
      rest = str(data['rest']) if 'rest' in data.files else 'middle'
  except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f'{path} is not a controller parameter file ({type(e).__name__}: {e})') from None
  if inputs != controller.inputs or params.shape != (controller.num_params,):
    raise DataError(f'{path} holds a controller.inputs={inputs!r} controller with '
                    f'{params.shape} parameters; the config wants inputs='
                    f'{controller.inputs!r} with {controller.num_params}: fix --config.controller')
  if rest != controller.rest:
    raise DataError(f'{path} was trained with controller.rest={rest!r}, the config says '
                    f'{controller.rest!r}: its actions would differ; fix --config.controller.rest')
  return params


# ---------------------------------------------------------------------------- the Policy


class Agent(Policy):
  """One environment's policy from a WorldModel and one controller parameter vector."""

  def __init__(self, world: WorldModel, params: np.ndarray):
    self.world = world
    self.params = tf.constant(np.asarray(params, np.float32)[None])
    self.state = world.seq.initial_state(1)

  def reset(self, seed: int) -> None:
    del seed  # the agent is deterministic: z is V's mean, as in the paper's controller
    self.state = self.world.seq.initial_state(1)

  def act(self, frame: np.ndarray) -> PolicyStep:
    out, self.state = self.world.step(tf.constant(frame[None]), self.state, self.params)
    info = tf.nest.map_structure(lambda t: t.numpy()[0], out)
    return PolicyStep(info['action'].astype(np.float32), info)
