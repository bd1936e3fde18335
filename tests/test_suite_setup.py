"""The suite's own set-up (tests/conftest.py): a debug data set shared by pytest-xdist workers is
built once, by the first to ask, and rebuilt when a build failed."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import built_once


class Factory:
  """Stands in for pytest's tmp_path_factory as an xdist worker sees it: its own basetemp, in
  the folder all workers of the run share."""

  def __init__(self, shared, worker: str):
    self.basetemp = shared / worker

  def getbasetemp(self):
    return self.basetemp


def test_workers_asking_at_once_build_once_and_read_the_same_folder(tmp_path, monkeypatch):
  monkeypatch.setenv('PYTEST_XDIST_WORKER', 'gw0')
  builds = []

  def build(folder):
    builds.append(folder)
    time.sleep(0.5)  # long enough for every other worker to arrive while this one builds
    with open(os.path.join(folder, 'data'), 'w') as f:
      f.write('built')

  folders = []
  workers = [threading.Thread(target=lambda w=w: folders.append(
      built_once(Factory(tmp_path, w), 'debug_run', build))) for w in ('gw0', 'gw1', 'gw2')]
  for w in workers:
    w.start()
  for w in workers:
    w.join()
  assert len(builds) == 1 and folders == [str(tmp_path / 'debug_run')] * 3
  with open(tmp_path / 'debug_run' / 'data') as f:
    assert f.read() == 'built'


def test_a_failed_build_is_started_again_from_nothing(tmp_path, monkeypatch):
  monkeypatch.setenv('PYTEST_XDIST_WORKER', 'gw1')

  def broken(folder):
    with open(os.path.join(folder, 'half'), 'w') as f:
      f.write('half')
    raise RuntimeError('the build failed')

  with pytest.raises(RuntimeError, match='the build failed'):
    built_once(Factory(tmp_path, 'gw1'), 'debug_run', broken)
  folder = built_once(Factory(tmp_path, 'gw0'), 'debug_run', lambda f: None)
  assert os.listdir(folder) == []  # what the failed build left is gone
