"""What stages leave beside their results: code snapshots without media, TensorBoard scalars and
metrics.jsonl files that read back."""

from __future__ import annotations

import logging
import os
import tarfile

from conftest import REPO, debug_config
from wm.infra import snapshot


def archived_names(stage_dir: str) -> list[str]:
  with tarfile.open(os.path.join(stage_dir, 'snapshot', 'code.tar.gz')) as tar:
    return tar.getnames()


def test_a_snapshot_archives_code_and_configs_but_not_the_result_video(tmp_path):
  assert os.path.exists(os.path.join(REPO, 'configs', 'results', 'small-agent.mp4'))
  snapshot.write(str(tmp_path), debug_config(), {}, argv=['test'])
  names = archived_names(str(tmp_path))
  assert 'configs/carracing.py' in names and 'wm/infra/snapshot.py' in names
  assert not [n for n in names if n.endswith(('.mp4', '.gif', '.png', '.npz'))], names
  archive = os.path.getsize(os.path.join(tmp_path, 'snapshot', 'code.tar.gz'))
  assert archive < 600 * 1024, archive  # the video alone was 720 KB


def test_media_and_files_over_a_megabyte_are_left_out_with_a_note(tmp_path, caplog):
  repo = tmp_path / 'repo'
  (repo / 'configs' / 'results').mkdir(parents=True)
  (repo / 'wm').mkdir()
  (repo / 'wm' / 'model.py').write_text('x = 1\n')
  (repo / 'configs' / 'small.py').write_text('y = 2\n')
  (repo / 'configs' / 'results' / 'curve.PNG').write_bytes(b'\x89PNG')
  (repo / 'configs' / 'table.csv').write_bytes(b'0' * (snapshot.MAX_FILE_BYTES + 1))
  with caplog.at_level(logging.INFO):
    snapshot.write(str(tmp_path / 'stage'), debug_config(), {}, argv=['test'],
                   repo_root=str(repo))
  names = archived_names(str(tmp_path / 'stage'))
  assert {'wm/model.py', 'configs/small.py'} <= set(names)
  assert not {'configs/results/curve.PNG', 'configs/table.csv'} & set(names)
  note = next(r.getMessage() for r in caplog.records if 'leaves out' in r.getMessage())
  assert 'configs/results/curve.PNG' in note and 'configs/table.csv (1024 KB)' in note, note
