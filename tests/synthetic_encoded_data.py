"""A synthetic encoded data set with the real schema and a learnable deterministic dynamics.

Written exactly like the encoding stage's output (wm/records.encoded_example, GZIP shards, a
manifest per split with 'format', 'z_size', 'action_size'), so M's stage can be tested before
and independently of a trained VAE. The toy world:

    mu_{t+1} = 0.9 * R mu_t + 0.5 * W a_t     (R a rotation, W fixed; logvar = log 0.05^2)
    reward_t = mu_t[0],   terminated at the last step of every third rollout

Rollout lengths vary (some shorter than the debug preset's sequence length), so boundaries and
padding are exercised.
"""

from __future__ import annotations

import os

import numpy as np

from wm import records
from wm.infra import fileio
from wm.stages import shard

Z_SIZE = 4
ACTION_SIZE = 3
LENGTHS = {'train': [37, 25, 6, 40, 31, 18, 40, 29, 12, 40], 'valid': [40, 9, 26]}
SPLIT_SHARDS = {'train': 3, 'valid': 1}
STD = 0.05


def dynamics(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  angle = 0.5
  rotation = np.eye(Z_SIZE)
  rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
  return 0.9 * rotation, 0.5 * rng.normal(size=(ACTION_SIZE, Z_SIZE))


def rollout(index: int, steps: int, rng: np.random.Generator, a: np.ndarray,
            b: np.ndarray) -> dict[str, np.ndarray]:
  mu = np.zeros((steps + 1, Z_SIZE), np.float32)
  mu[0] = rng.normal(size=Z_SIZE)
  actions = rng.uniform(-1, 1, size=(steps, ACTION_SIZE)).astype(np.float32)
  for t in range(steps):
    mu[t + 1] = mu[t] @ a.T + actions[t] @ b
  terminated = np.zeros(steps, np.uint8)
  terminated[-1] = index % 3 == 0
  return {'mu': mu, 'logvar': np.full_like(mu, 2 * np.log(STD)), 'actions': actions,
          'rewards': mu[:-1, 0].copy(), 'terminated': terminated,
          'truncated': 1 - terminated, 'seed': index}


def write(root: str, seed: int = 0) -> dict[str, list[dict[str, np.ndarray]]]:
  """Writes ROOT/encoded/{train,valid}; returns the rollouts by split (index order)."""
  rng = np.random.default_rng(seed)
  a, b = dynamics(rng)
  written, index = {}, 0
  for split, lengths in LENGTHS.items():
    out_dir = os.path.join(root, 'encoded', split)
    os.makedirs(out_dir)
    rollouts = []
    for steps in lengths:
      rollouts.append(rollout(index, steps, rng, a, b))
      index += 1
    groups = np.array_split(np.arange(len(rollouts)), SPLIT_SHARDS[split])
    shards = []
    for k, group in enumerate(groups):
      name = records.shard_name('encoded', k, len(groups))
      path = os.path.join(out_dir, name)
      records.write(path, [records.encoded_example(rollouts[i], int(rollouts[i]['seed']))
                           for i in group])
      shards.append({'file': name, 'rollouts': [int(rollouts[i]['seed']) for i in group],
                     'num_rollouts': len(group),
                     'frames': int(sum(len(rollouts[i]['mu']) for i in group)),
                     'bytes': os.path.getsize(path), 'sha256': shard.sha256(path)})
    fileio.write_json(os.path.join(out_dir, shard.MANIFEST), {
        'format': 'encoded-rollouts-v1', 'z_size': Z_SIZE, 'action_size': ACTION_SIZE,
        'num_shards': len(shards), 'num_rollouts': len(rollouts),
        'num_frames': sum(s['frames'] for s in shards),
        'bytes': sum(s['bytes'] for s in shards), 'shards': shards})
    written[split] = rollouts
  return written
