"""A faster CarRacing renderer: the same picture, drawing only what the camera sees.

gymnasium's `CarRacing._render_road` rotates every grass patch and road tile (about 800
polygons) in Python, one vertex at a time, every step; most of them are off screen. Here all
polygons are transformed at once with numpy and only the visible ones (about 60) are drawn, with
the same pygame calls in the same order. Frames match the original's up to float rounding at a
few polygon edges (tests/test_carracing.py). Selected by `env.fast_render`.

Drawing costs about 20 times the physics (about 4.8 ms against 0.2 ms a step here), so with
`skip_render` set a step only advances the physics and returns the previous frame: an agent that
repeats its action for k frames (`env.action_repeat`) renders only the frames it sees.

With `render_scale` s < 1 (`env.render_scale`) the 96x96 observation is drawn on an
(s * 1000) x (s * 800) window instead of the full one, then scaled down as before: the same
scene, zoom and camera, with s^2 of the pixels to fill, flip and average. At s = 0.25 a drawn
frame costs about a third, and differs from the full-size one by well under 1/255 on average,
the difference being where anti-aliased edges fall (tests/test_carracing.py). Only the
observation is affected; `render()` for videos always draws the full window.
"""

from __future__ import annotations

import numpy as np
import pygame
from gymnasium.envs.box2d import car_racing
from pygame import gfxdraw

GYM_ID = 'wm/FastCarRacing-v3'


def _grass_polygons() -> np.ndarray:
  d = car_racing.GRASS_DIM
  corners = np.array([(d, 0), (0, 0), (0, d), (d, d)], np.float64)
  origins = np.array([(d * x, d * y) for x in range(-20, 20, 2) for y in range(-20, 20, 2)],
                     np.float64)
  return origins[:, None, :] + corners[None]


class FastCarRacing(car_racing.CarRacing):
  """CarRacing whose road and grass are transformed in numpy and culled before drawing."""

  _GRASS = _grass_polygons()
  skip_render = False  # step() leaves self.state (the frame) as it was: see the module doc

  def __init__(self, *args, render_scale: float = 1.0, **kwargs):
    if not 0 < render_scale <= 1:
      raise ValueError(f'render_scale must be in (0, 1], got {render_scale}')
    super().__init__(*args, **kwargs)
    self.render_scale = render_scale

  def _render(self, mode):
    if mode == 'state_pixels' and getattr(self, 'state', None) is not None and self.skip_render:
      return self.state.copy()  # a new array per step, as gymnasium's env checker expects
    if mode == 'state_pixels' and self.render_scale < 1 and 't' in self.__dict__:
      return self._draw_scaled_state()
    return super()._render(mode)

  def _draw_scaled_state(self) -> np.ndarray:
    """The observation drawn on a window render_scale times the full one's size."""
    s = self.render_scale
    width, height = round(car_racing.WINDOW_W * s), round(car_racing.WINDOW_H * s)
    self.surf = pygame.Surface((width, height))
    angle = -self.car.hull.angle
    # The camera zooms in over the first second of an episode, as in the full-size view.
    zoom = s * car_racing.SCALE * (0.1 * max(1 - self.t, 0) + car_racing.ZOOM * min(self.t, 1))
    x, y = self.car.hull.position
    shift = pygame.math.Vector2(-x * zoom, -y * zoom).rotate_rad(angle)
    translation = (width / 2 + shift[0], height / 4 + shift[1])
    self._render_road(zoom, translation, angle)
    self.car.draw(self.surf, zoom, translation, angle, False)  # False: no skid particles
    self.surf = pygame.transform.flip(self.surf, False, True)
    self._render_indicators(width, height)
    self._draw_reward_counter(s, height)
    return self._create_image_array(self.surf, (car_racing.STATE_W, car_racing.STATE_H))

  def _draw_reward_counter(self, scale: float, height: int) -> None:
    font = _font(max(1, round(42 * scale)))
    text = font.render(f'{self.reward:04.0f}', True, (255, 255, 255), (0, 0, 0))
    box = text.get_rect()
    box.center = (60 * scale, height - height * 2.5 / 40.0)
    self.surf.blit(text, box)

  def _road_arrays(self) -> tuple[np.ndarray, list]:
    """The road tiles as one array, rebuilt whenever reset() made a new track."""
    if getattr(self, '_road_source', None) is not self.road_poly:
      self._road_source = self.road_poly
      self._road = np.array([[(p[0], p[1]) for p in poly] for poly, _ in self.road_poly],
                            np.float64).reshape(-1, 4, 2)
      self._road_colors = [[int(c) for c in color] for _, color in self.road_poly]
    return self._road, self._road_colors

  def _render_road(self, zoom, translation, angle):
    bounds = car_racing.PLAYFIELD
    field = [(bounds, bounds), (bounds, -bounds), (-bounds, -bounds), (-bounds, bounds)]
    self._draw_colored_polygon(self.surf, field, self.bg_color, zoom, translation, angle,
                               clip=False)
    grass_color = self.grass_color
    for poly in self._visible(self._GRASS, zoom, translation, angle):
      self._draw(poly, grass_color)
    road, road_colors = self._road_arrays()
    visible = self._visible_mask(road, zoom, translation, angle)
    transformed = self._transform(road[visible], zoom, translation, angle)
    colors = [c for c, v in zip(road_colors, visible) if v]
    for poly, color in zip(transformed, colors):
      self._draw(poly, color)

  def _draw(self, poly: np.ndarray, color) -> None:
    points = [tuple(p) for p in poly.tolist()]
    gfxdraw.aapolygon(self.surf, points, color)
    gfxdraw.filled_polygon(self.surf, points, color)

  @staticmethod
  def _transform(polys: np.ndarray, zoom, translation, angle) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = polys[..., 0], polys[..., 1]
    out = np.empty_like(polys)
    out[..., 0] = (x * cos - y * sin) * zoom + translation[0]
    out[..., 1] = (x * sin + y * cos) * zoom + translation[1]
    return out

  def _visible_mask(self, polys, zoom, translation, angle) -> np.ndarray:
    """Polygons with a vertex near the window being drawn (of whatever size)."""
    pts = self._transform(polys, zoom, translation, angle)
    width, height = self.surf.get_size()
    m = car_racing.MAX_SHAPE_DIM * width / car_racing.WINDOW_W
    inside = ((pts[..., 0] >= -m) & (pts[..., 0] <= width + m)
              & (pts[..., 1] >= -m) & (pts[..., 1] <= height + m))
    return inside.any(axis=1)

  def _visible(self, polys, zoom, translation, angle) -> np.ndarray:
    mask = self._visible_mask(polys, zoom, translation, angle)
    return self._transform(polys[mask], zoom, translation, angle)


_FONTS: dict[int, pygame.font.Font] = {}  # the reward counter's font by size, while pygame is up


def _font(size: int) -> pygame.font.Font:
  """The default font at `size`, loaded once per pygame lifetime.

  A font is invalid once pygame quits, which any env's close() may do (classic control's always
  does, and gymnasium's check_env closes envs of its own), so the cache is emptied then.
  """
  if not pygame.font.get_init():  # not started yet, or pygame.font.quit() was called alone
    _FONTS.clear()
    pygame.font.init()
  if not _FONTS:
    pygame.register_quit(_FONTS.clear)  # pygame forgets its quit functions once it has run them
  if size not in _FONTS:
    _FONTS[size] = pygame.font.Font(pygame.font.get_default_font(), size)
  return _FONTS[size]


def register() -> str:
  """Registers the fast variant with gymnasium (once) and returns its id."""
  import gymnasium as gym
  if GYM_ID not in gym.registry:
    gym.register(GYM_ID, entry_point=FastCarRacing, max_episode_steps=1000,
                 reward_threshold=900)
  return GYM_ID
