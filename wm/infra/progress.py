"""Progress lines: rewritten in place on a terminal, one log line every `log_every_s` otherwise."""

from __future__ import annotations

import sys
import time

from absl import logging


class Progress:
  """Reports `done/total` with rates; `update(done, **counters)` is cheap to call often."""

  def __init__(self, name: str, total: int, log_every_s: float = 30.0):
    self.name, self.total = name, total
    self.start = time.perf_counter()
    self.tty = sys.stderr.isatty()
    self.every = 0.5 if self.tty else log_every_s
    self.last = -float('inf')

  def update(self, done: int, force: bool = False, **rates: float) -> None:
    now = time.perf_counter()
    if not force and now - self.last < self.every and done < self.total:
      return
    self.last = now
    elapsed = now - self.start
    parts = [f'{self.name}: {done}/{self.total}']
    parts += [f'{key} {value / max(elapsed, 1e-9):,.0f}/s' for key, value in rates.items()]
    parts.append(f'{elapsed:,.0f}s')
    line = ', '.join(parts)
    if self.tty:
      end = '\n' if done >= self.total or force else ''
      sys.stderr.write('\r' + line + end)
      sys.stderr.flush()
    else:
      logging.info(line)

  def elapsed(self) -> float:
    return time.perf_counter() - self.start
