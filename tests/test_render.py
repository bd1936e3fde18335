"""Panels land in their own cells with their labels; videos decode to the frames written."""

import os

import numpy as np
import pytest

from wm import render, video


def six_panels(value: float = 0.5) -> list:
  rng = np.random.default_rng(int(value * 10))
  return [
      render.ImagePanel('V: reconstruction', np.full((64, 64, 3), value, np.float32)),
      render.ImagePanel('M: next frame', rng.random((64, 64, 3))),
      render.BarPanel('z', np.full(8, 2 * value), np.full(8, 0.3)),
      render.BoundedBarPanel('action', [value, value, 0.0], [-1, 0, 0], [1, 1, 1]),
      render.HeatmapPanel('h', np.full(16, value)),
      render.CurvePanel('return so far', np.arange(10) * value, x_max=40),
  ]


def region(image, rect):
  y, x, h, w = rect
  return image[y:y + h, x:x + w]


def test_frame_and_each_panel_are_where_the_layout_says():
  frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
  layout = render.Layout(frame.shape, 6, scale=4)
  image = layout.compose(frame, six_panels())
  assert image.shape == layout.shape and image.dtype == np.uint8
  assert image.shape[0] % 2 == 0 and image.shape[1] % 2 == 0
  # The frame, upscaled 4x by nearest neighbour, exactly.
  np.testing.assert_array_equal(region(image, layout.frame_rect),
                                np.repeat(np.repeat(frame, 4, 0), 4, 1))
  rects = layout.rects
  assert len(rects) == 6 and len(set(rects)) == 6
  for y, x, h, w in rects:  # inside the image, right of the frame, not overlapping it
    assert x >= layout.frame_rect[3] and y + h <= image.shape[0] and x + w <= image.shape[1]
  for rect in rects:
    cell = region(image, rect)
    label_strip = cell[1:render.LABEL_HEIGHT, 1:-1]
    assert (label_strip > 200).all(axis=2).any(), f'no label text in the cell at {rect}'


@pytest.mark.parametrize('which', range(6))
def test_a_panels_data_changes_only_its_own_cell(which):
  frame = np.zeros((64, 64, 3), np.uint8)
  layout = render.Layout(frame.shape, 6, scale=4)
  before = layout.compose(frame, six_panels(0.5))
  panels = six_panels(0.5)
  panels[which] = six_panels(0.9)[which]
  after = layout.compose(frame, panels)
  changed = np.argwhere((before != after).any(axis=2))
  assert len(changed), f'panel {which} drew nothing different for different data'
  y, x, h, w = layout.rects[which]
  assert (changed[:, 0] >= y).all() and (changed[:, 0] < y + h).all()
  assert (changed[:, 1] >= x).all() and (changed[:, 1] < x + w).all()


def test_bars_grow_up_for_positive_values_and_flag_actions_out_of_bounds():
  cell = np.zeros((100, 100, 3), np.uint8)
  render.BarPanel('z', [2.0], limit=3.0).draw(cell)
  body = render.body_of(cell)
  column = body[:, body.shape[1] // 2]
  bar_rows = np.where((column == render.BAR).all(axis=1))[0]
  assert len(bar_rows) and bar_rows.max() <= body.shape[0] // 2 + 1  # above the zero line
  render.BoundedBarPanel('a', [1.5], [-1.0], [1.0]).draw(cell)
  assert (cell == render.OUT_OF_BOUNDS).all(axis=2).any()
  render.BoundedBarPanel('a', [0.5], [-1.0], [1.0]).draw(cell)
  assert not (cell == render.OUT_OF_BOUNDS).all(axis=2).any()


def test_find_panels_walks_nested_info_in_order():
  a, b, c = (render.CurvePanel(str(i), [0.0]) for i in range(3))
  info = {'action': np.zeros(3), 'v': {'x': a, 'list': [b, {'deep': (c,)}]}, 'h': 'text'}
  assert render.find_panels(info) == [a, b, c]
  assert render.find_panels({'action': np.zeros(3)}) == []


@pytest.mark.parametrize('name', ['clip.mp4', 'clip.gif'])
def test_video_decodes_to_the_frames_written(tmp_path, name):
  path = str(tmp_path / name)
  frames = [np.full((51, 70, 3), 20 * i, np.uint8) for i in range(7)]  # odd height: padded
  with video.Writer(path, fps=10) as writer:
    for frame in frames:
      writer.append(frame)
  assert os.listdir(tmp_path) == [name]  # no temporary file left
  decoded = video.read(path)
  assert decoded.shape == (7, 52, 70, 3)
  for i, frame in enumerate(frames):  # lossy codecs: close, and in the right order
    assert abs(float(decoded[i].mean()) - float(frame.mean())) < 4, (i, decoded[i].mean())


def test_a_failed_recording_leaves_no_file(tmp_path):
  path = str(tmp_path / 'clip.mp4')
  with pytest.raises(RuntimeError):
    with video.Writer(path, fps=10) as writer:
      writer.append(np.zeros((32, 32, 3), np.uint8))
      raise RuntimeError('killed mid-episode')
  assert os.listdir(tmp_path) == []


def test_video_names_other_than_mp4_or_gif_are_refused(tmp_path):
  with pytest.raises(video.UserError, match='mp4'):
    video.Writer(str(tmp_path / 'clip.avi'), fps=10)
