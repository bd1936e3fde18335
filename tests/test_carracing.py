"""The fast CarRacing renderer draws the same frames and gives the same rewards."""

import numpy as np

from wm import envs
from wm.config import EnvConfig


def test_fast_render_matches_gymnasiums_renderer():
  fast = envs.make(EnvConfig(max_steps=200, fast_render=True, crop_dashboard=False))
  slow = envs.make(EnvConfig(max_steps=200, fast_render=False, crop_dashboard=False))
  assert type(fast.env.unwrapped).__name__ == 'FastCarRacing'
  assert type(slow.env.unwrapped).__name__ == 'CarRacing'
  rng = np.random.default_rng(0)
  a, b = fast.reset(seed=11), slow.reset(seed=11)
  differing = []
  for _ in range(120):
    action = rng.uniform([-1, 0, 0], [1, 1, 0.2]).astype(np.float32)
    (a, ra, ta, _), (b, rb, tb, _) = fast.step(action), slow.step(action)
    assert (ra, ta) == (rb, tb)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 16, diff.max()
    differing.append((diff > 0).mean())
  assert np.mean(differing) < 0.02, np.mean(differing)
  assert a.std() > 10  # a real picture, not a blank one
