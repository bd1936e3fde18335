"""V and M for the controller stage's tests: randomly initialised real ConvVAE and MDNRNN (or
Transformer) at debug sizes, exported with wm/models/export.py, plus dream starts.

The controller stage needs only their interfaces and shapes, not trained weights, so its tests
do not wait for V and M to train.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from wm.models import export

SEQ_KWARGS = {
    'mdnrnn': {'hidden_size': 16, 'num_mixtures': 2},
    'transformer': {'hidden_size': 16, 'num_mixtures': 2, 'num_layers': 1, 'num_heads': 2,
                    'max_context': 10},
}


def write(run_dir: str, z_size: int = 8, action_size: int = 3, seq: str = 'mdnrnn',
          seed: int = 0) -> str:
  """RUN/vae/export, RUN/seq/export and RUN/seq/initial_latents.npz; returns run_dir."""
  tf.keras.utils.set_random_seed(seed)
  models = (('encoder', 'conv_vae', {'z_size': z_size, 'frame_size': 64}, 'vae'),
            ('sequence_model', seq, {'z_size': z_size, 'action_size': action_size,
                                     **SEQ_KWARGS[seq]}, 'seq'))
  for kind, name, kwargs, folder in models:
    model = export.KINDS[kind](name)(**kwargs)
    model.build_for_loading()
    export.save(model, os.path.join(run_dir, folder, 'export'), kind, name, kwargs)
  rng = np.random.default_rng(seed)
  np.savez(os.path.join(run_dir, 'seq', 'initial_latents.npz'),
           mu=rng.normal(size=(5, z_size)).astype(np.float32),
           logvar=np.full((5, z_size), -2.0, np.float32))
  return run_dir
