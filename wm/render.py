"""Panels beside the frames: images, bars, bounded bars, heatmaps and curves, drawn with numpy.

A policy publishes panels in `PolicyStep.info` (at any depth of dicts, lists and tuples), the way
ALF's `predict_step` info carries its render images; play finds them with `find_panels` and
`compose` puts the upscaled frame and the panels side by side into one uint8 image:

    info = {'vae': {'reconstruction': render.ImagePanel('V: reconstruction', recon)}}
    image = render.compose(frame, render.find_panels(info))  # H x W x 3 uint8

Each panel carries its label. What does not change from frame to frame (background, label, axes,
tick texts) is drawn once with PIL per panel kind, size and static arguments and cached; a frame
only copies that and fills the data in with vectorised numpy masks, so six panels cost about a
millisecond (scripts/benchmark_render.py compares it with a matplotlib figure per frame).

Rendering is off until `enable()`d (play's --alg_render); a policy computes what only a panel
needs (a decoded reconstruction, say) when `enabled()` is true.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (16, 16, 20)  # canvas around the cells
PANEL = (36, 36, 42)  # a panel's own background
TEXT = (235, 235, 235)
AXIS = (110, 110, 120)
BAR = (80, 160, 240)
ERROR = (250, 200, 60)
OUT_OF_BOUNDS = (240, 80, 70)
LINE = (120, 220, 120)
LABEL_HEIGHT = 14  # pixels of the label strip on top of every cell
PAD = 4  # margin inside a cell around the plotted area
_CACHE_LIMIT = 512
_enabled = False


def enable(on: bool = True) -> None:
  """Turns panel drawing on (play --alg_render) or off."""
  global _enabled
  _enabled = bool(on)


def enabled() -> bool:
  return _enabled


# ---------------------------------------------------------------------------- text and caches

_static_cache: dict[tuple, np.ndarray] = {}
_text_cache: dict[str, np.ndarray] = {}
_font = None


def _get_font() -> ImageFont.ImageFont:
  global _font
  if _font is None:
    _font = ImageFont.load_default(size=10)
  return _font


def text_mask(text: str) -> np.ndarray:
  """A float alpha mask [h, w] of `text` in the default font (cached per string)."""
  mask = _text_cache.get(text)
  if mask is None:
    if len(_text_cache) > _CACHE_LIMIT:
      _text_cache.clear()
    left, top, right, bottom = _get_font().getbbox(text or ' ')
    image = Image.new('L', (max(1, right), max(1, bottom)))
    ImageDraw.Draw(image).text((0, 0), text, fill=255, font=_get_font())
    mask = np.asarray(image, np.float32)[top:] / 255.0
    _text_cache[text] = mask
  return mask


def put_text(out: np.ndarray, text: str, y: int, x: int, color=TEXT, align: str = 'left') -> None:
  """Blends `text` into `out` with its top at row y; x is its left (or right) edge."""
  mask = text_mask(text)
  if align == 'right':
    x -= mask.shape[1]
  y, x = max(0, y), max(0, x)
  mask = mask[:out.shape[0] - y, :out.shape[1] - x]
  region = out[y:y + mask.shape[0], x:x + mask.shape[1]]
  alpha = mask[..., None]
  region[...] = (region * (1 - alpha) + np.asarray(color, np.float32) * alpha).astype(np.uint8)


def _static(key: tuple, draw) -> np.ndarray:
  """The cached static image for `key`, drawn by `draw()` the first time."""
  image = _static_cache.get(key)
  if image is None:
    if len(_static_cache) > _CACHE_LIMIT:
      _static_cache.clear()
    image = draw()
    image.flags.writeable = False
    _static_cache[key] = image
  return image


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Nearest-neighbour resize of a uint8 HxWx3 image (PIL's C code: ~10x numpy indexing)."""
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST))


def _fill_columns(body: np.ndarray, top: np.ndarray, bottom: np.ndarray, color) -> None:
  """Colours rows [top[c], bottom[c]) of every column c of `body` (vectorised)."""
  rows = np.arange(body.shape[0])[:, None]
  body[(rows >= top[None, :]) & (rows < bottom[None, :])] = color


def _to_uint8(image: Any) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 4:
    image = image[0]
  if image.dtype != np.uint8:
    image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=2)
  return image


# ---------------------------------------------------------------------------- panels


class Panel(abc.ABC):
  """Something drawn in one cell of the layout, under its label."""

  def __init__(self, label: str):
    self.label = label

  def static_key(self) -> tuple:
    """What the cached static part depends on besides the cell size."""
    return (type(self).__name__, self.label)

  def draw_static(self, cell: np.ndarray) -> None:
    """Draws the unchanging parts into the cell (label strip, plot area); override to add axes."""
    cell[...] = PANEL
    put_text(cell, self.label, 1, PAD)

  @abc.abstractmethod
  def draw_data(self, body: np.ndarray) -> None:
    """Draws this frame's data into `body`, the cell below the label strip minus the margin."""

  def draw(self, cell: np.ndarray) -> None:
    height, width = cell.shape[:2]

    def make():
      image = np.empty((height, width, 3), np.uint8)
      self.draw_static(image)
      return image

    cell[...] = _static(self.static_key() + (height, width), make)
    self.draw_data(body_of(cell))


def body_of(cell: np.ndarray) -> np.ndarray:
  return cell[LABEL_HEIGHT + PAD // 2:cell.shape[0] - PAD, PAD:cell.shape[1] - PAD]


class ImagePanel(Panel):
  """An image (uint8, or float in [0, 1]) scaled to fit, nearest neighbour."""

  def __init__(self, label: str, image: Any):
    super().__init__(label)
    self.image = image

  def draw_data(self, body: np.ndarray) -> None:
    image = _to_uint8(self.image)
    h, w = image.shape[:2]
    scale = min(body.shape[0] / h, body.shape[1] / w)
    dh, dw = max(1, int(h * scale)), max(1, int(w * scale))
    y, x = (body.shape[0] - dh) // 2, (body.shape[1] - dw) // 2
    body[y:y + dh, x:x + dw] = _resize(image, dh, dw)


class BarPanel(Panel):
  """Vertical bars around zero in [-limit, limit], with optional error bars (e.g. mu +- sigma)."""

  def __init__(self, label: str, values: Any, errors: Any = None, limit: float = 3.0):
    super().__init__(label)
    self.values = np.asarray(values, np.float32).ravel()
    self.errors = None if errors is None else np.asarray(errors, np.float32).ravel()
    self.limit = float(limit)

  def static_key(self) -> tuple:
    return super().static_key() + (len(self.values), self.limit)

  def draw_static(self, cell: np.ndarray) -> None:
    super().draw_static(cell)
    body = body_of(cell)
    body[body.shape[0] // 2] = AXIS
    put_text(cell, f'+{self.limit:g}', 1, cell.shape[1] - PAD, AXIS, align='right')

  def draw_data(self, body: np.ndarray) -> None:
    height, width = body.shape[:2]
    n = len(self.values)
    zero, scale = height // 2, (height / 2 - 1) / self.limit
    column = np.arange(width) * n // width  # bar index of each column
    # The last column of each bar's slot stays empty when there is room, to separate bars.
    is_bar = (((np.arange(width) + 1) * n // width) == column) | (width < 3 * n)
    y = np.round(zero - np.clip(self.values, -self.limit, self.limit) * scale).astype(int)
    top, bottom = np.minimum(y, zero)[column], np.maximum(y, zero)[column] + 1
    _fill_columns(body, np.where(is_bar, top, 0), np.where(is_bar, bottom, 0), BAR)
    if self.errors is not None:
      low = np.clip(self.values - self.errors, -self.limit, self.limit)
      high = np.clip(self.values + self.errors, -self.limit, self.limit)
      centre = (np.arange(n) * width + width // 2) // n
      etop = np.zeros(width, int)
      ebottom = np.zeros(width, int)
      etop[centre] = np.round(zero - high * scale)
      ebottom[centre] = np.round(zero - low * scale) + 1
      _fill_columns(body, etop, ebottom, ERROR)


class BoundedBarPanel(Panel):
  """Horizontal bars, one per dimension, each inside its own [low, high] (e.g. actions)."""

  def __init__(self, label: str, values: Any, low: Any, high: Any,
               names: Sequence[str] | None = None):
    super().__init__(label)
    self.values = np.asarray(values, np.float32).ravel()
    n = len(self.values)
    self.low = np.broadcast_to(np.asarray(low, np.float32).ravel(), (n,)) if np.size(low) in (
        1, n) else np.asarray(low, np.float32).ravel()
    self.high = np.broadcast_to(np.asarray(high, np.float32).ravel(), (n,)) if np.size(high) in (
        1, n) else np.asarray(high, np.float32).ravel()
    self.names = tuple(names) if names else tuple(str(i) for i in range(n))

  def static_key(self) -> tuple:
    return super().static_key() + (tuple(self.low), tuple(self.high), self.names)

  def _rows(self, height: int) -> tuple[int, int]:
    """Height of one dimension's row and of its bar."""
    row = height // max(1, len(self.values))
    return row, max(1, min(row - 12, row * 2 // 3))

  def draw_static(self, cell: np.ndarray) -> None:
    super().draw_static(cell)
    body = body_of(cell)
    row, bar = self._rows(body.shape[0])
    for i, name in enumerate(self.names):
      y = i * row + row - bar
      body[y:y + bar] = BACKGROUND
      x0 = self._x(i, 0.0, body.shape[1])
      body[y - 2:y + bar + 2, x0] = AXIS
      put_text(body, f'{name} [{self.low[i]:g}, {self.high[i]:g}]', y - 12, 0, AXIS)

  def _x(self, i: int, value: float, width: int) -> int:
    span = max(float(self.high[i] - self.low[i]), 1e-9)
    origin = min(max(value, float(self.low[i])), float(self.high[i]))
    return int(round((origin - self.low[i]) / span * (width - 1)))

  def draw_data(self, body: np.ndarray) -> None:
    row, bar = self._rows(body.shape[0])
    width = body.shape[1]
    for i, value in enumerate(self.values):
      y = i * row + row - bar
      x0, x1 = sorted((self._x(i, 0.0, width), self._x(i, float(value), width)))
      inside = self.low[i] <= value <= self.high[i]
      body[y:y + bar, x0:x1 + 1] = BAR if inside else OUT_OF_BOUNDS


def _diverging_lut() -> np.ndarray:
  t = np.linspace(-1.0, 1.0, 256)[:, None]
  cold, mid, hot = np.array([60, 120, 255]), np.array([24, 24, 28]), np.array([255, 150, 40])
  return np.where(t < 0, mid + (cold - mid) * -t, mid + (hot - mid) * t).astype(np.uint8)


class HeatmapPanel(Panel):
  """A vector (e.g. the LSTM's hidden state) as a near-square grid of colours in [vmin, vmax]."""

  def __init__(self, label: str, values: Any, vmin: float = -1.0, vmax: float = 1.0):
    super().__init__(label)
    self.values = np.asarray(values, np.float32).ravel()
    self.vmin, self.vmax = float(vmin), float(vmax)

  def static_key(self) -> tuple:
    return super().static_key() + (len(self.values),)

  def draw_data(self, body: np.ndarray) -> None:
    n = len(self.values)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    lut = _static(('lut',), _diverging_lut)
    scaled = (self.values - self.vmin) * (255.0 / max(self.vmax - self.vmin, 1e-9))
    index = np.full(rows * cols, -1, np.intp)
    index[:n] = np.clip(scaled, 0, 255).astype(np.intp)
    colours = np.where(index[:, None] >= 0, lut[np.maximum(index, 0)], np.uint8(PANEL[0]))
    grid = colours.reshape(rows, cols, 3)
    size = min(body.shape[0] // rows, body.shape[1] // cols) or 1
    h, w = rows * size, cols * size
    y, x = (body.shape[0] - h) // 2, (body.shape[1] - w) // 2
    body[y:y + h, x:x + w] = _resize(np.ascontiguousarray(grid), h, w)


class CurvePanel(Panel):
  """A curve of a history (e.g. the return so far) over steps [0, max(len, x_max))."""

  def __init__(self, label: str, values: Any, x_max: int = 0):
    super().__init__(label)
    self.values = np.asarray(values, np.float32).ravel()
    self.x_max = int(x_max)

  def draw_data(self, body: np.ndarray) -> None:
    height, width = body.shape[:2]
    values = self.values if len(self.values) else np.zeros(1, np.float32)
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if high - low < 1e-6:
      high = low + 1.0
    plot_top, plot_height = 12, height - 13  # room for the value texts above the plot
    def to_y(v):
      return plot_top + np.round((high - v) / (high - low) * (plot_height - 1)).astype(int)
    body[int(to_y(np.float32(0.0)))] = AXIS
    span = max(len(values), self.x_max, 2)
    columns = max(1, min(width, int(round(len(values) / span * width))))
    xs = np.arange(columns) * (span / width)
    y = to_y(np.interp(xs, np.arange(len(values)), values))
    previous = np.concatenate([y[:1], y[:-1]])
    top = np.full(width, 0)
    bottom = np.full(width, 0)
    top[:columns], bottom[:columns] = np.minimum(y, previous), np.maximum(y, previous) + 1
    _fill_columns(body, top, bottom, LINE)
    put_text(body, f'{high:.4g}', 0, 0, AXIS)
    put_text(body, f'now {values[-1]:.4g}', 0, width, TEXT, align='right')


# ---------------------------------------------------------------------------- finding and layout


def find_panels(info: Any) -> list[Panel]:
  """Every Panel in `info` (nested dicts, lists, tuples), in insertion order."""
  found = []
  if isinstance(info, Panel):
    found.append(info)
  elif isinstance(info, dict):
    for value in info.values():
      found.extend(find_panels(value))
  elif isinstance(info, (list, tuple)):
    for value in info:
      found.extend(find_panels(value))
  return found


class Layout:
  """Where things go: the frame (upscaled `scale` times) on the left, square cells of `cell`
  pixels in columns to its right, top to bottom then left to right. Dimensions are even (video)."""

  def __init__(self, frame_shape: Sequence[int], num_panels: int, scale: int = 4,
               cell: int | None = None):
    fh, fw = int(frame_shape[0]) * scale, int(frame_shape[1]) * scale
    self.scale = scale
    self.cell = cell or max(96, fh // 2)
    per_column = max(1, fh // self.cell)
    columns = int(math.ceil(num_panels / per_column))
    height = max(fh, min(num_panels, per_column) * self.cell)
    width = fw + columns * self.cell
    self.shape = (height + height % 2, width + width % 2, 3)
    self.frame_rect = ((height - fh) // 2, 0, fh, fw)  # y, x, h, w
    self.rects = [((i % per_column) * self.cell, fw + (i // per_column) * self.cell, self.cell,
                   self.cell) for i in range(num_panels)]
    self._background = np.empty(self.shape, np.uint8)
    self._background[...] = BACKGROUND  # filling from a tuple is slow: done once

  def compose(self, frame: np.ndarray, panels: Sequence[Panel]) -> np.ndarray:
    assert len(panels) == len(self.rects), (len(panels), len(self.rects))
    canvas = self._background.copy()
    y, x, h, w = self.frame_rect
    canvas[y:y + h, x:x + w] = _resize(_to_uint8(frame), h, w)
    for panel, (y, x, h, w) in zip(panels, self.rects):
      panel.draw(canvas[y + 1:y + h - 1, x + 1:x + w - 1])  # a one-pixel gap between cells
    return canvas


_layouts: dict[tuple, Layout] = {}


def compose(frame: np.ndarray, panels: Iterable[Panel] = (), scale: int = 4,
            cell: int | None = None) -> np.ndarray:
  """The frame upscaled `scale` times with `panels` beside it, as one uint8 image."""
  panels = list(panels)
  key = (np.shape(frame)[:2], len(panels), scale, cell)
  layout = _layouts.get(key)
  if layout is None:
    layout = _layouts[key] = Layout(np.shape(frame), len(panels), scale, cell)
  return layout.compose(frame, panels)
