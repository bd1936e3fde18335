"""Steps the debug V and M on fixed global batches under one distribution strategy, with the
stages' own train steps, and writes the losses: the same numbers at every world size is what
tests/test_distribute.py checks. Run as a process of its own (a strategy is set up before any
other TensorFlow op):

    python tests/distributed_steps.py KIND OUT.json [CPU_REPLICAS]

KIND is a distribute.strategy (multi_worker takes its workers from TF_CONFIG); the chief writes
OUT.json: {"vae": [loss per step], "seq": [...], "replicas": R, "workers": W}.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from wm import config as config_lib, distribute  # noqa: E402
from wm.models import registry  # noqa: E402
from wm.stages import seq as seq_stage, vae as vae_stage  # noqa: E402

STEPS = 4
VAE_BATCH, SEQ_BATCH, LENGTH, Z, ACTIONS = 8, 4, 6, 8, 3


def vae_batches(frame_size: int) -> tf.data.Dataset:
  frames = np.random.RandomState(0).randint(0, 256, (STEPS, VAE_BATCH, frame_size, frame_size, 3))
  return tf.data.Dataset.from_tensor_slices(frames.astype(np.uint8))


def seq_batches() -> tf.data.Dataset:
  rng = np.random.RandomState(1)
  shape = (STEPS, SEQ_BATCH, LENGTH)
  mask = (np.arange(LENGTH)[None, None, :] < rng.randint(2, LENGTH + 1, shape[:2])[..., None])
  batches = {'z': rng.randn(*shape, Z), 'actions': rng.uniform(-1, 1, (*shape, ACTIONS)),
             'z_next': rng.randn(*shape, Z), 'reward': rng.randn(*shape),
             'done': rng.rand(*shape) < 0.1, 'mask': mask}
  return tf.data.Dataset.from_tensor_slices(
      {k: v.astype(np.float32) for k, v in batches.items()})


def run_vae(config, dist) -> list[float]:
  tf.keras.utils.set_random_seed(0)
  with dist.scope():
    model = vae_stage.build_model(config)
    optimizer = tf.keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
  step = vae_stage.make_train_step(model, optimizer, dist, VAE_BATCH, seed=3)
  data = iter(dist.global_batches(vae_batches(config.env.frame_size)))
  return [float(step(next(data), tf.constant(i, tf.int64), tf.constant(0.0))['loss'])
          for i in range(STEPS)]


def run_seq(config, dist, padded_length: int = 0, learning_rate: float = 1e-2) -> list[float]:
  """`padded_length`: each batch's gradient weighted by its fill, as with seq.bucket_steps (at a
  learning rate where a fill summed wrongly over the replicas moves the losses past tolerance)."""
  tf.keras.utils.set_random_seed(0)
  kwargs = seq_stage.model_kwargs(config.seq, Z, ACTIONS)
  with dist.scope():
    model = registry.sequence_model_class(config.seq.model)(**kwargs)
    trainer = seq_stage.Trainer(model, learning_rate, grad_clip=0.5, dist=dist,  # clipping binds
                                padded_length=padded_length)
  data = iter(dist.global_batches(seq_batches()))
  return [float(trainer.train_step(next(data), tf.constant(0.0))['loss']) for _ in range(STEPS)]


def main(kind: str, out: str, cpu_replicas: int = 1) -> None:
  config = config_lib.load('configs/carracing.py:debug')
  config.vae.z_size = Z
  config.distribute.strategy, config.distribute.cpu_replicas = kind, cpu_replicas
  dist = distribute.create(config.distribute)
  losses = {'vae': run_vae(config, dist), 'seq': run_seq(config, dist),
            'seq_weighted': run_seq(config, dist, padded_length=LENGTH, learning_rate=0.1),
            'replicas': dist.replicas, 'workers': dist.workers}
  if dist.chief:
    with open(out, 'w') as f:
      json.dump(losses, f)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
