"""Writes a run dir's V and M exports and dream starts for the controller tests.

Randomly initialised real models (ConvVAE, MDNRNN from the registry) when this checkout has them,
else the stand-ins of standin_models.py. The controller stage only needs the interfaces.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def register() -> None:
  """Makes the stand-ins loadable in this process (subprocesses get sitecustomize.py)."""
  if HERE not in sys.path:
    sys.path.insert(0, HERE)
  from wm.models import registry  # pylint: disable=import-outside-toplevel
  registry.ENCODERS.setdefault('standin_encoder', 'standin_models:StandinEncoder')
  registry.SEQUENCE_MODELS.setdefault('standin_seq', 'standin_models:StandinSeq')


def env_path() -> str:
  return HERE


def real_models_available() -> bool:
  from wm.models import registry  # pylint: disable=import-outside-toplevel
  try:
    registry.encoder_class('conv_vae')
    registry.sequence_model_class('mdnrnn')
  except ImportError:
    return False
  return True


def write_models(run_dir: str, z_size: int = 8, hidden_size: int = 16, action_size: int = 3,
                 seed: int = 0) -> None:
  if real_models_available():
    write_real_models(run_dir, z_size, hidden_size, action_size, seed)
  else:
    write_standin_models(run_dir, z_size, hidden_size, action_size, seed)
  rng = np.random.default_rng(seed)
  np.savez(os.path.join(run_dir, 'seq', 'initial_latents.npz'),
           mu=rng.normal(size=(5, z_size)).astype(np.float32),
           logvar=np.full((5, z_size), -2.0, np.float32))


def write_real_models(run_dir: str, z_size: int, hidden_size: int, action_size: int,
                      seed: int) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from wm.models import export  # pylint: disable=import-outside-toplevel
  tf.keras.utils.set_random_seed(seed)
  for kind, name, kwargs, folder in (
      ('encoder', 'conv_vae', {'z_size': z_size, 'frame_size': 64}, 'vae'),
      ('sequence_model', 'mdnrnn', {'z_size': z_size, 'action_size': action_size,
                                    'hidden_size': hidden_size, 'num_mixtures': 2}, 'seq')):
    model = export.KINDS[kind](name)(**kwargs)
    model.build_for_loading()
    export.save(model, os.path.join(run_dir, folder, 'export'), kind, name, kwargs)


def write_standin_models(run_dir: str, z_size: int, hidden_size: int, action_size: int,
                         seed: int) -> None:
  register()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from standin_models import StandinEncoder, StandinSeq  # pylint: disable=import-outside-toplevel
  from wm.models import export  # pylint: disable=import-outside-toplevel
  tf.keras.utils.set_random_seed(seed)
  enc_kwargs = {'z_size': z_size, 'frame_size': 64}
  encoder = StandinEncoder(**enc_kwargs)
  encoder.build_for_loading()
  export.save(encoder, os.path.join(run_dir, 'vae', 'export'), 'encoder', 'standin_encoder',
              enc_kwargs)
  seq_kwargs = {'z_size': z_size, 'action_size': action_size, 'hidden_size': hidden_size}
  seq = StandinSeq(**seq_kwargs)
  seq.build_for_loading()
  # Small positive reward, done logit mostly negative: dream episodes run and score.
  bias = seq.head.bias.numpy()
  bias[-1] = -3.0
  seq.head.bias.assign(bias)
  export.save(seq, os.path.join(run_dir, 'seq', 'export'), 'sequence_model', 'standin_seq',
              seq_kwargs)
