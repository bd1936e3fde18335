"""Progress lines: rewritten in place on a terminal, one log line every `log_every_s` otherwise.

Given a `folder` (the stage's), a Progress also keeps `folder/progress.json` up to date (written
atomically, at most every `write_every_s` seconds and at the end) for `python -m wm.infra.status`:

    {"name": "vae train steps", "done": 120, "total": 2000, "percent": 6.0, "rate": 9.6,
     "eta_s": 196.0, "elapsed_s": 14.2, "updated_at": 1764600000.0, "host": "node7", "pid": 4242}

`rate` (done per second) counts only what this process did, from its first update (or from
`start`, the amount done before it began), so a resumed stage's estimate is not flattered by the
work of an earlier run. Several processes sharing one stage folder (array tasks) share the file:
it shows the one that wrote last.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from absl import logging

from wm.infra import fileio

FILE = 'progress.json'
HOST = socket.gethostname().split('.')[0]


def format_duration(seconds: float) -> str:
  """12s, 3m, 2h05m: short and rounded, for estimates."""
  if seconds < 90:
    return f'{seconds:.0f}s'
  if seconds < 90 * 60:
    return f'{seconds / 60:.0f}m'
  hours, minutes = divmod(int(round(seconds / 60)), 60)
  return f'{hours}h{minutes:02d}m'


class Progress:
  """Reports `done/total` with rates; `update(done, **counters)` is cheap to call often."""

  def __init__(self, name: str, total: int, log_every_s: float = 30.0, folder: str | None = None,
               start: int | None = None, write_every_s: float = 3.0):
    self.name, self.total = name, total
    self.start = time.perf_counter()
    self.tty = sys.stderr.isatty()
    self.every = 0.5 if self.tty else log_every_s
    self.last = -float('inf')
    self.path = os.path.join(folder, FILE) if folder else None
    self.write_every, self.written, self.written_done = write_every_s, -float('inf'), None
    self.first = (start, self.start) if start is not None else None  # (done, time): rate's base

  def update(self, done: int, force: bool = False, **rates: float) -> None:
    now = time.perf_counter()
    if self.first is None:
      self.first = (done, now)
    finished = done >= self.total
    if self.path and (force or now - self.written >= self.write_every or
                      (finished and done != self.written_done)):
      self._write(done, now)
    if not force and now - self.last < self.every and not finished:
      return
    self.last = now
    elapsed = now - self.start
    parts = [f'{self.name}: {done}/{self.total} ({self.percent(done):.0f}%)']
    parts += [f'{key} {value / max(elapsed, 1e-9):,.0f}/s' for key, value in rates.items()]
    parts.append(f'{elapsed:,.0f}s')
    eta = self.eta(done, now)
    if eta is not None and not finished:
      parts.append(f'~{format_duration(eta)} left')
    line = ', '.join(parts)
    if self.tty:
      end = '\n' if finished or force else ''
      sys.stderr.write('\r' + line + end)
      sys.stderr.flush()
    else:
      logging.info(line)

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def percent(self, done: int) -> float:
    return 100.0 * done / self.total if self.total > 0 else 100.0

  def rate(self, done: int, now: float) -> float | None:
    """Done per second since the first update (or `start`); None before there is any."""
    first_done, first_time = self.first or (done, now)
    if done <= first_done or now <= first_time:
      return None
    return (done - first_done) / (now - first_time)

  def eta(self, done: int, now: float) -> float | None:
    """Seconds left at the current rate; 0 once finished, None while the rate is unknown."""
    if done >= self.total:
      return 0.0
    rate = self.rate(done, now)
    return (self.total - done) / rate if rate else None

  def _write(self, done: int, now: float) -> None:
    rate = self.rate(done, now)
    state = {'name': self.name, 'done': done, 'total': self.total,
             'percent': round(self.percent(done), 2), 'rate': rate, 'eta_s': self.eta(done, now),
             'elapsed_s': round(now - self.start, 3), 'updated_at': time.time(), 'host': HOST,
             'pid': os.getpid()}
    self.written, self.written_done = now, done
    try:
      fileio.write_json(self.path, state)
    except OSError as e:  # a full or read-only disk must not stop the work it reports on
      logging.warning('cannot write %s (%s): progress is no longer recorded there', self.path, e)
      self.path = None
