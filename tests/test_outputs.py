"""What stages leave beside their results: code snapshots without media, TensorBoard scalars and
metrics.jsonl files that read back."""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import tarfile

import pytest

from conftest import REPO, debug_config, run_script
from wm import config as config_lib, rollouts, training
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


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the event files directly in `folder`, in order written."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  found = {}
  for path in sorted(glob.glob(os.path.join(folder, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField('simple_value'):
          number = value.simple_value
        else:
          array = tf.make_ndarray(value.tensor)
          if array.ndim or array.dtype.kind != 'f':
            continue  # an image
          number = array.item()
        found.setdefault(value.tag, []).append((event.step, number))
  return found


def test_collection_writes_each_rollouts_return_and_the_step_rate(debug_data):
  folder = os.path.join(debug_data, 'rollouts')
  scalars = read_scalars(os.path.join(folder, 'tb'))
  indices = rollouts.list_indices(folder)
  returns = [float(rollouts.load(rollouts.path_for(folder, i))['rewards'].sum()) for i in indices]
  logged = scalars['data/rollout_return']
  assert sorted(step for step, _ in logged) == list(range(1, len(indices) + 1)), logged
  assert sorted(v for _, v in logged) == pytest.approx(sorted(returns), rel=1e-5)
  rates = scalars['data/steps_per_s']
  assert len(rates) == len(indices) and all(v > 0 for _, v in rates), rates


def test_evaluation_writes_every_return_and_the_mean_and_a_rerun_replaces_them(tmp_path):
  run_dir = str(tmp_path / 'run')
  for episodes in (3, 2):
    run_script('evaluate', f'--run_dir={run_dir}', '--policy=random', f'--episodes={episodes}')
  result = json.load(open(os.path.join(run_dir, 'evaluate', 'result.json')))
  scalars = read_scalars(os.path.join(run_dir, 'evaluate', 'tb'))
  assert [step for step, _ in scalars['eval/return']] == [0, 1]  # the first run's are gone
  assert [v for _, v in scalars['eval/return']] == pytest.approx(result['returns'], rel=1e-5)
  assert scalars['eval/return_mean'] == [(2, pytest.approx(result['mean'], rel=1e-5))]
  limit = config_lib.load_json(os.path.join(run_dir, 'config.json')).env.agent_steps()
  assert len(result['steps']) == len(result['ended']) == 2
  for steps, ended in zip(result['steps'], result['ended']):  # ended early, or ran to the limit
    assert (ended and 0 < steps <= limit) or (not ended and steps == limit), result
  assert result['ended_count'] == sum(result['ended'])


def test_a_side_evaluation_leaves_the_run_config_as_it_was(tmp_path):
  # Another seed's test episodes for a side result: the run's own config (which later stages
  # read) keeps its seed, though --config is explicit (run_script passes the debug preset).
  run_dir = str(tmp_path / 'run')
  run_script('evaluate', f'--run_dir={run_dir}', '--policy=random', '--episodes=1')
  with open(os.path.join(run_dir, 'config.json')) as f:
    before = f.read()
  side = run_script('evaluate', f'--run_dir={run_dir}', '--policy=random', '--episodes=1',
                    '--output=seed9.json', '--config.seed=9')
  with open(os.path.join(run_dir, 'config.json')) as f:
    assert f.read() == before
  assert json.load(open(os.path.join(run_dir, 'evaluate', 'seed9.json')))['episodes'] == 1
  assert 'config.json is unchanged' in side.stderr, side.stderr[-2000:]
  # The stage's snapshot still says how result.json was made; the side result's is beside it.
  def snapshot_seed(name):
    with open(os.path.join(run_dir, 'evaluate', name, 'config.json')) as f:
      return json.load(f)['seed']
  assert (snapshot_seed('snapshot'), snapshot_seed('snapshot-seed9')) == (0, 9)


def check_metrics_match_tensorboard(stage_dir: str, log_every: int, train_steps: int) -> list:
  """STAGE/metrics.jsonl has a line per logged step, each scalar as TensorBoard has it."""
  rows = [json.loads(line) for line in open(os.path.join(stage_dir, training.METRICS))]
  steps = [row['step'] for row in rows]
  assert steps == sorted(set(steps)), steps  # one line per step
  assert set(range(log_every, train_steps + 1, log_every)) <= set(steps), steps
  in_jsonl = {(name, row['step']): value for row in rows for name, value in row.items()
              if name != 'step'}
  in_tb = {(name, step): value  # the last written at a step, as in the line
           for name, points in read_scalars(os.path.join(stage_dir, 'tb')).items()
           for step, value in points}
  assert sorted(in_jsonl) == sorted(in_tb)
  for key, value in in_tb.items():
    assert in_jsonl[key] == pytest.approx(value, rel=1e-6), key
  return rows


def test_vae_metrics_jsonl_holds_its_tensorboard_scalars(debug_encoded):
  config = debug_config().vae
  rows = check_metrics_match_tensorboard(os.path.join(debug_encoded, 'vae'), config.log_every,
                                         config.train_steps)
  assert {'train/loss', 'train/recon', 'train/kl'} <= set(rows[0])
  assert {'valid/loss', 'train/loss'} <= set(rows[-1]) and rows[-1]['step'] == config.train_steps


def test_seq_metrics_jsonl_holds_its_tensorboard_scalars(debug_world_model):
  config = debug_config().seq
  rows = check_metrics_match_tensorboard(os.path.join(debug_world_model, 'seq'),
                                         config.log_every, config.train_steps)
  assert {'train/loss', 'train/latent_nll', 'train/sequence_steps_per_s'} <= set(rows[0])
  assert 'valid/loss' in rows[-1] and rows[-1]['step'] == config.train_steps
  assert all(math.isfinite(v) for row in rows for v in row.values())
  valid_steps = [step for step, _ in read_scalars(os.path.join(
      debug_world_model, 'seq', 'tb'))['valid/loss']]
  assert valid_steps == list(range(config.valid_every, config.train_steps + 1,
                                   config.valid_every)), valid_steps  # the last step's once


def test_metrics_drop_the_steps_after_the_checkpoint_a_rerun_resumes_from(tmp_path):
  metrics = training.Metrics(str(tmp_path))
  for step in (5, 10, 15):
    metrics.scalars({'train/loss': 1.0 / step}, step)
  metrics.scalars({'valid/loss': 0.5}, 15)  # same step: the same line
  metrics.flush()
  with open(tmp_path / training.METRICS, 'a') as f:
    f.write('{"step": 20, "train/lo')  # a line cut short by a kill
  assert [r['step'] for r in training.read_metrics(str(tmp_path / training.METRICS))] == [
      5, 10, 15]
  resumed = training.Metrics(str(tmp_path))
  resumed.resume(10)  # the checkpoint was at step 10
  resumed.scalars({'train/loss': 0.09}, 15)
  resumed.flush()
  rows = [json.loads(line) for line in open(tmp_path / training.METRICS)]
  assert rows == [{'step': 5, 'train/loss': 0.2}, {'step': 10, 'train/loss': 0.1},
                  {'step': 15, 'train/loss': 0.09}]
