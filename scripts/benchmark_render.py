"""Benchmark: six panels beside a frame, wm.render (numpy/PIL) vs a matplotlib figure per frame.

Input:  nothing (synthetic frames and panel data of the paper's sizes: a 64x64 frame, 64x64
        reconstruction and prediction, z of 32 with sigmas, 3 bounded actions, an LSTM h of 256,
        a return curve of up to 1000 steps). Model compute is excluded: both draw the same data.
Output: frames/s of each and their ratio on stdout; with --save_dir, one image of each.

    python scripts/benchmark_render.py [--frames=200] [--matplotlib_frames=20] [--save_dir=/tmp]

The matplotlib baseline builds and draws a new figure per frame, the way a per-frame matplotlib
renderer does (ALF's `render` helpers draw a figure per image); it is sized to the same pixels.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

import numpy as np
from absl import app, flags

from wm import render

_FRAMES = flags.DEFINE_integer('frames', 300, 'Frames drawn with wm.render.')
_MPL_FRAMES = flags.DEFINE_integer('matplotlib_frames', 30, 'Frames drawn with matplotlib.')
_SAVE_DIR = flags.DEFINE_string('save_dir', None, 'Write one PNG of each renderer here.')

ACTION_LOW, ACTION_HIGH = np.array([-1.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0])
ACTION_NAMES = ('steer', 'gas', 'brake')


def synthetic_steps(count: int, seed: int = 0) -> list[dict]:
  """Per-frame data of the six panels, as a trained agent would produce it."""
  rng = np.random.default_rng(seed)
  returns = np.cumsum(rng.normal(0.5, 1.0, count))
  return [{
      'frame': rng.integers(0, 256, (64, 64, 3), np.uint8),
      'recon': rng.random((64, 64, 3), np.float32),
      'pred': rng.random((64, 64, 3), np.float32),
      'mu': rng.normal(size=32).astype(np.float32),
      'sigma': np.abs(rng.normal(0.5, 0.2, 32)).astype(np.float32),
      'action': rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32),
      'h': np.tanh(rng.normal(size=256)).astype(np.float32),
      'returns': returns[:t + 1],
  } for t in range(count)]


def ours(step: dict) -> np.ndarray:
  panels = [
      render.ImagePanel('V: reconstruction', step['recon']),
      render.ImagePanel('M: predicted next frame', step['pred']),
      render.BarPanel('z: mu +- sigma', step['mu'], step['sigma']),
      render.BoundedBarPanel('action', step['action'], ACTION_LOW, ACTION_HIGH, ACTION_NAMES),
      render.HeatmapPanel('M: hidden state h', step['h']),
      render.CurvePanel('return so far', step['returns'], x_max=1000),
  ]
  return render.compose(step['frame'], panels)


def matplotlib_figure(step: dict, shape: tuple[int, int]) -> np.ndarray:
  """The same frame and panels as one new matplotlib figure, rasterised to `shape` pixels."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  dpi = 100
  fig = plt.figure(figsize=(shape[1] / dpi, shape[0] / dpi), dpi=dpi)
  grid = fig.add_gridspec(2, 5)
  ax = fig.add_subplot(grid[:, :2])
  ax.imshow(step['frame'])
  ax.set_axis_off()
  cells = [fig.add_subplot(grid[r, c]) for c in range(2, 5) for r in range(2)]
  cells[0].imshow(step['recon']), cells[0].set_title('V: reconstruction', fontsize=6)
  cells[1].imshow(step['pred']), cells[1].set_title('M: predicted next frame', fontsize=6)
  z = np.arange(len(step['mu']))
  cells[2].bar(z, step['mu'], yerr=step['sigma'], ecolor='orange')
  cells[2].set_ylim(-3, 3), cells[2].set_title('z: mu +- sigma', fontsize=6)
  for i in range(3):
    cells[3].barh(i, step['action'][i], left=0)
  cells[3].set_xlim(-1, 1), cells[3].set_yticks(range(3), ACTION_NAMES, fontsize=5)
  cells[3].set_title('action', fontsize=6)
  cells[4].imshow(step['h'].reshape(16, 16), vmin=-1, vmax=1, cmap='coolwarm')
  cells[4].set_title('M: hidden state h', fontsize=6)
  cells[5].plot(step['returns']), cells[5].set_xlim(0, 1000)
  cells[5].set_title('return so far', fontsize=6)
  for cell in cells:
    cell.tick_params(labelsize=5)
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return image


def frames_per_s(draw, steps: list[dict]) -> tuple[float, np.ndarray]:
  draw(steps[0])  # warm-up: caches, imports, fonts
  start = time.perf_counter()
  for step in steps:
    image = draw(step)
  return len(steps) / (time.perf_counter() - start), image


def main(argv):
  del argv
  steps = synthetic_steps(max(_FRAMES.value, _MPL_FRAMES.value) + 1)
  fast, image = frames_per_s(ours, steps[:_FRAMES.value])
  slow, mpl_image = frames_per_s(lambda s: matplotlib_figure(s, image.shape[:2]),
                                 steps[:_MPL_FRAMES.value])
  print(f'image: {image.shape[1]}x{image.shape[0]} pixels, a 64x64 frame at 4x and six panels')
  print(f'render/wm_frames_per_s          {fast:8.1f}  ({1000 / fast:.2f} ms/frame)')
  print(f'render/matplotlib_frames_per_s  {slow:8.1f}  ({1000 / slow:.2f} ms/frame)')
  print(f'render/speedup                  {fast / slow:8.1f}x')
  if _SAVE_DIR.value:
    from PIL import Image
    os.makedirs(_SAVE_DIR.value, exist_ok=True)
    Image.fromarray(image).save(os.path.join(_SAVE_DIR.value, 'render_wm.png'))
    Image.fromarray(mpl_image).save(os.path.join(_SAVE_DIR.value, 'render_matplotlib.png'))


if __name__ == '__main__':
  app.run(main)
