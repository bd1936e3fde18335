"""Video files: .mp4 (H.264 through imageio-ffmpeg) or, when the name ends in .gif, an animated GIF.

    with video.Writer('RUN/play/episode.mp4', fps=50) as writer:
      writer.append(image)  # H x W x 3 uint8, every frame the same size

Frames are streamed to a temporary name beside the target and renamed when the writer closes
without an error, so a killed process never leaves a partial video under the final name. H.264
(yuv420p) needs even dimensions: odd frames are padded by one row/column (edge pixels).
"""

from __future__ import annotations

import os

import numpy as np

from wm.infra import fileio
from wm.errors import UserError

FORMATS = ('.mp4', '.gif')
# One pass, a palette of each frame's own colours (a fixed 3-3-2 palette shifts greys to blue).
_GIF_PALETTE = 'split[a][b];[a]palettegen=stats_mode=single[p];[b][p]paletteuse=new=1'


def check_path(path: str) -> str:
  """The format ('.mp4' or '.gif') of `path`, or a UserError naming the accepted endings."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise UserError(f'video file {path!r} must end in one of {FORMATS} (mp4: H.264 via ffmpeg, '
                    'gif: animated GIF)')
  return ext


def even(image: np.ndarray) -> np.ndarray:
  """Pads an odd height or width by repeating the last row/column (H.264 needs even sizes)."""
  pad_h, pad_w = image.shape[0] % 2, image.shape[1] % 2
  if pad_h or pad_w:
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode='edge')
  return image


class Writer:
  """Appends uint8 frames to a video written atomically at `path` on close."""

  def __init__(self, path: str, fps: int):
    self.path, self.fps = path, int(fps)
    self.format = check_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.tmp = fileio.tmp_name(os.path.abspath(path))
    self.frames = 0
    self.shape = None
    self._writer = None

  def _open(self, width: int, height: int):
    import imageio_ffmpeg
    if self.format == '.mp4':
      # macro_block_size=2: keep the (even) size instead of rounding it up to 16 pixels.
      codec, pix_fmt, params = 'libx264', 'yuv420p', ['-f', 'mp4']
    else:  # ffmpeg's GIF encoder streams frames (Pillow's would hold all of them in memory)
      codec, pix_fmt, params = 'gif', 'pal8', ['-vf', _GIF_PALETTE, '-f', 'gif', '-loop', '0']
    writer = imageio_ffmpeg.write_frames(
        self.tmp, (width, height), fps=self.fps, codec=codec, pix_fmt_in='rgb24',
        pix_fmt_out=pix_fmt, macro_block_size=2, ffmpeg_log_level='error', output_params=params)
    writer.send(None)  # starts ffmpeg
    return writer

  def append(self, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f'video frames must be H x W x 3 uint8, got {image.shape} {image.dtype}')
    image = even(image)
    if self.shape is None:
      self.shape = image.shape
      self._writer = self._open(image.shape[1], image.shape[0])
    elif image.shape != self.shape:
      raise ValueError(f'frame {self.frames} is {image.shape}, earlier frames {self.shape}')
    self._writer.send(np.ascontiguousarray(image))
    self.frames += 1

  def close(self, keep: bool = True) -> None:
    """Finishes the file and renames it into place (or deletes it when `keep` is false)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    if keep and self.frames:
      os.replace(self.tmp, self.path)
      fileio.fsync_dir(os.path.dirname(os.path.abspath(self.path)))
    elif os.path.exists(self.tmp):
      os.remove(self.tmp)

  def __enter__(self) -> Writer:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close(keep=exc_type is None)


def read(path: str) -> np.ndarray:
  """All frames of a video as [T, H, W, 3] uint8 (for tests and checks)."""
  import imageio.v3 as iio
  if path.lower().endswith('.gif'):
    frames = iio.imread(path, index=None, plugin='pillow', mode='RGB')
  else:
    frames = iio.imread(path, index=None, plugin='FFMPEG')
  return np.asarray(frames)
