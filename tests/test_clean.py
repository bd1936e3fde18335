"""python -m wm clean --rollouts: the rollouts go once every one is in a whole shard; the stages
that would need them again refuse, and the rest of the run is as it was."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import DEBUG, REPO, copy_run, run_script, script_env
from wm import rollouts
from wm.errors import DataError
from wm.infra import iterate, runs


def wm(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'wm', *args], capture_output=True, text=True,
                        timeout=300, env=script_env(), cwd=REPO)


def digests(folder: str) -> dict[str, str]:
  """{relative path: sha256} of every file under `folder`."""
  found = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return found


def refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  for phrase in phrases:
    assert phrase in result.stderr, (phrase, result.stderr[-3000:])


def test_rollouts_go_once_sharded_and_what_needs_them_refuses(debug_data, tmp_path):
  run = copy_run(debug_data, str(tmp_path / 'run'))
  folder = os.path.join(run, 'rollouts')
  indices = rollouts.list_indices(folder)
  records = digests(os.path.join(run, 'records'))

  dry = wm('clean', run, '--rollouts', '--dry_run')
  assert dry.returncode == 0 and f'would remove {len(indices)} rollouts' in dry.stdout, dry
  assert rollouts.list_indices(folder) == indices

  # A rollout no shard holds, or shards that are not whole: nothing is removed.
  stray = rollouts.path_for(folder, 999999)
  shutil.copy(rollouts.path_for(folder, indices[0]), stray)
  refused(wm('clean', run, '--rollouts'), '1 rollouts in', 'are in no shard', stray)
  os.remove(stray)
  shard_file = sorted(n for n in os.listdir(os.path.join(run, 'records', 'train'))
                      if n.startswith('raw'))[0]
  shard_path = os.path.join(run, 'records', 'train', shard_file)
  with open(shard_path, 'ab') as f:
    f.write(b'x')
  refused(wm('clean', run, '--rollouts'), shard_path, 'are not whole')
  with open(shard_path, 'rb+') as f:
    f.truncate(os.path.getsize(shard_path) - 1)
  assert rollouts.list_indices(folder) == indices

  done = wm('clean', run, '--rollouts')
  assert done.returncode == 0 and f'removed {len(indices)} rollouts' in done.stdout, done
  assert rollouts.list_indices(folder) == []
  assert os.path.exists(os.path.join(folder, rollouts.CLEANED))
  assert digests(os.path.join(run, 'records')) == records  # the shards untouched

  shown = wm('status', run)
  assert 'rollouts' in shown.stdout and 'removed once sharded' in shown.stdout, shown.stdout
  # The pipeline skips collect and shard as before; a top-up refuses, writing nothing.
  again = wm(f'--run_dir={run}', f'--config={DEBUG}', '--stages=collect,shard')
  assert again.returncode == 0 and again.stdout.count('done already') == 2, again
  topped = wm(f'--run_dir={run}', f'--config={DEBUG}', '--stages=collect',
              f'--config.collect.num_rollouts={len(indices) + 1}')
  assert topped.returncode == 2, topped.stderr[-3000:]
  with open(os.path.join(run, 'logs', 'collect.log')) as f:
    log = f.read()
  assert rollouts.CLEANED in log and 'collecting (collect.num_rollouts=' in log, log[-3000:]
  assert rollouts.list_indices(folder) == []
  os.remove(os.path.join(run, 'records', 'DONE'))
  reshard = run_script('shard_rollouts', f'--run_dir={run}', check=False)
  refused(reshard, rollouts.CLEANED, 'sharding them again')
  assert digests(os.path.join(run, 'records')) == {
      k: v for k, v in records.items() if k != 'DONE'}


def test_clean_refuses_what_it_cannot_clean(tmp_path):
  refused(wm('clean', str(tmp_path / 'missing'), '--rollouts'), 'does not exist')
  refused(wm('clean', str(tmp_path)), 'usage: python -m wm clean RUN')
  (tmp_path / 'rollouts').mkdir()
  refused(wm('clean', str(tmp_path), '--rollouts'), 'the shard stage has not finished')


def test_a_round_of_iterative_training_or_a_benchmark_refuses_cleaned_rollouts(tmp_path):
  previous, round_run = runs.Run(str(tmp_path / 'r0')), runs.Run(str(tmp_path / 'r1'))
  os.makedirs(previous.stage_dir('collect'))
  with open(os.path.join(previous.stage_dir('collect'), rollouts.CLEANED), 'w') as f:
    f.write('{"removed": 3}')
  with pytest.raises(DataError, match='a round of iterative training'):
    iterate.link_rollouts(previous, round_run)
  assert not os.path.exists(round_run.root)
  bench = run_script('benchmark_seq', '--bucket_steps=4', f'--lengths_from={previous.root}',
                     check=False, config=None)
  refused(bench, rollouts.CLEANED, '--lengths_from needs them')


def test_raw_shards_go_once_encoded_and_what_reads_them_refuses(debug_data, debug_encoded,
                                                                tmp_path):
  refused(wm('clean', debug_data, '--records', '--dry_run'), 'the vae stage has not finished')
  run = copy_run(debug_encoded, str(tmp_path / 'run'))
  records_dir = os.path.join(run, 'records')
  raw = digests(records_dir)
  shards = sorted(k for k in raw if re.match(r'(train|valid)/raw\.tfrecord-', k))
  encoded = digests(os.path.join(run, 'encoded'))
  vae_done = digests(os.path.join(run, 'vae'))

  dry = wm('clean', run, '--records', '--dry_run')
  assert dry.returncode == 0 and f'would remove {len(shards)} raw shards' in dry.stdout, dry
  assert digests(records_dir) == raw
  done = wm('clean', run, '--records')
  assert done.returncode == 0 and f'removed {len(shards)} raw shards' in done.stdout, done
  left = digests(records_dir)
  assert not any(k in left for k in shards) and runs.CLEANED in left
  assert all(left[k] == v for k, v in raw.items() if k not in shards)  # manifests, DONE kept
  assert digests(os.path.join(run, 'encoded')) == encoded  # the latents untouched
  assert 'removed once encoded' in wm('status', run).stdout

  # The pipeline skips the finished stages; V trained further and the rollouts' clean refuse,
  # changing nothing.
  again = wm(f'--run_dir={run}', f'--config={DEBUG}', '--stages=shard,vae,encode')
  assert again.returncode == 0 and again.stdout.count('done already') == 3, again
  more = wm(f'--run_dir={run}', f'--config={DEBUG}', '--stages=vae',
            '--config.vae.train_steps=30')
  refused(more, runs.CLEANED, 'clean --records')
  topped = run_script('train_vae', f'--run_dir={run}', '--config.vae.train_steps=30',
                      check=False)
  refused(topped, runs.CLEANED, 'shard_rollouts.py')
  assert digests(os.path.join(run, 'vae')) == vae_done  # DONE, V and its checkpoints as they were
  rollouts_dry = wm('clean', run, '--rollouts', '--dry_run')  # the latents hold them now
  assert rollouts_dry.returncode == 0 and 'rollouts' in rollouts_dry.stdout and (
      os.path.join(run, 'encoded')) in rollouts_dry.stdout, rollouts_dry

  # The shard stage rerun writes the same shards again from the rollouts.
  os.remove(os.path.join(records_dir, 'DONE'))
  run_script('shard_rollouts', f'--run_dir={run}')
  back = digests(records_dir)
  assert {k: back[k] for k in shards} == {k: raw[k] for k in shards}
  assert runs.CLEANED not in back
  shown = wm('status', run).stdout
  assert 'removed once' not in shown and 'stale' not in shown, shown
