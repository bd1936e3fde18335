"""`python -m wm iterate`: a round of the paper's iterative training on the debug preset, for
real: the trained controller collects new rollouts with exploration noise, V and M train on from
their checkpoints on all the data, CMA-ES continues, and the round is evaluated apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, copy_run, script_env

from wm import config as config_lib, es, rollouts
from wm.infra import fileio, iterate, runs
from wm.stages import shard

ROUND = ['--config.iterate.iterations=1', '--config.iterate.rollouts=2',
         '--config.iterate.vae_steps=10', '--config.iterate.seq_steps=10',
         '--config.iterate.generations=1', '--parallelism=1']


def wm(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'wm', *args], capture_output=True, text=True,
                        env=script_env(), cwd=REPO, timeout=900)


def test_a_round_collects_with_the_controller_and_trains_on(debug_agent, tmp_path):
  root = copy_run(debug_agent, str(tmp_path / 'run'))
  first = wm('iterate', f'--run_dir={root}', *ROUND)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  base, round1 = runs.Run(root), runs.Run(iterate.round_dir(root, 1))
  config = config_lib.load_json(round1.config_path)
  assert (config.collect.policy, config.collect.controller_run) == ('controller', root)

  # Data: round 0's 6 rollouts linked, 2 new ones played by round 0's controller, with noise.
  folder = round1.stage_dir('collect')
  names = [os.path.basename(rollouts.path_for(folder, i)) for i in range(8)]
  assert [os.path.islink(os.path.join(folder, n)) for n in names] == [True] * 6 + [False] * 2
  assert fileio.read_json(round1.done_path('shard'))['train'] + fileio.read_json(
      round1.done_path('shard'))['valid'] == 8
  # Round 0's full shards hold the same rollouts in round 1: hard links, not written again.
  linked = 0
  for split in ('train', 'valid'):
    before = {tuple(i['rollouts']): i['file']
              for i in shard.read_manifest(base.split_dir('shard', split))['shards']}
    for info in shard.read_manifest(round1.split_dir('shard', split))['shards']:
      same = before.get(tuple(info['rollouts']))
      if same:
        assert os.path.samefile(os.path.join(round1.split_dir('shard', split), info['file']),
                                os.path.join(base.split_dir('shard', split), same))
        linked += 1
      assert any(i >= 6 for i in info['rollouts']) or same, info  # only new ones are new
  assert linked >= 2
  new = [np.load(os.path.join(folder, n)) for n in names[6:]]
  old = [np.load(os.path.join(folder, n)) for n in names[:6]]
  assert not {int(r['seed']) for r in new} & {int(r['seed']) for r in old}

  # V trained on, so the new V encoded every rollout: none of round 0's latents were copied.
  for split in ('train', 'valid'):
    meta = os.path.join(round1.split_dir('encode', split), shard.META)
    assert [fileio.read_json(os.path.join(meta, n))['reused'] for n in os.listdir(meta)] == [0]

  # Training continued from round 0's checkpoints, by the round's amounts.
  steps = {s: fileio.read_json(r.done_path(s))['step'] for r in (base, round1)
           for s in ('vae', 'seq')}
  assert fileio.read_json(round1.done_path('vae'))['step'] == 30
  assert fileio.read_json(round1.done_path('seq'))['step'] == 30, steps
  history = fileio.read_jsonl(os.path.join(round1.stage_dir('controller'), 'history.jsonl'))
  assert len(history) == fileio.read_json(round1.done_path('controller'))['generations'] == 3
  # The round's best was chosen by its own evaluation, through its own V and M.
  last = history[-1]
  assert fileio.read_json(round1.done_path('controller'))['best_score'] == pytest.approx(
      max(last['eval_mean'], last['centroid_eval_mean']))
  assert fileio.read_json(round1.done_path('evaluate'))['mean'] is not None

  summary = (tmp_path / 'run' / 'iterations' / 'summary.md').read_text()
  assert summary.count('\n| ') == 2 and '| 1 | iterations/1 | 8 | 30 | 30 |' in summary, summary

  again = wm('iterate', f'--run_dir={root}', *ROUND)  # everything is done: nothing runs
  assert again.returncode == 0 and 'started' not in again.stdout, again.stdout[-2000:]


@pytest.mark.parametrize('search,warm', [('continue', 0), ('restart', 0), ('restart', 4)])
def test_a_round_continues_or_restarts_the_search(debug_agent, tmp_path, search, warm):
  """iterate.search: round 1's controller starts from round 0's CMA-ES state and generation
  count, or from scratch, or (iterate.warm_generations) from a dream search in its own M; V and
  M continue either way."""
  root = copy_run(debug_agent, str(tmp_path / 'run'))
  runs.Run(root).mark_done('evaluate')  # what a round starts after (its score is not read here)
  settings = config_lib.IterateConfig(iterations=1, generations=3, search=search,
                                      warm_generations=warm)
  base = config_lib.load_json(runs.Run(root).config_path)
  if warm:  # the debug preset searches in the dream: the rounds' warm start is for real searches
    base.controller.mode = 'real'
    fileio.write_text(runs.Run(root).config_path, config_lib.to_json(base) + '\n')
  round1 = iterate.prepare(root, 1, settings)
  before = fileio.read_json(runs.Run(root).done_path('controller'))['generations']
  config = config_lib.load_json(round1.config_path)
  carried = os.path.exists(os.path.join(round1.stage_dir('controller'), es.STATE))
  if search == 'continue':
    assert (config.controller.generations, carried) == (before + 3, True)
  else:
    assert (config.controller.generations, carried) == (3, False)
  assert config.controller.warm_generations == warm
  assert os.path.isdir(os.path.join(round1.stage_dir('vae'), 'checkpoints'))
  assert os.path.isdir(os.path.join(round1.stage_dir('seq'), 'checkpoints'))
  iterate.prepare(root, 1, settings)  # idempotent: nothing changes on a rerun
  assert os.path.exists(os.path.join(round1.stage_dir('controller'), es.STATE)) == carried


def test_a_round_continues_each_judge_from_its_own_checkpoints(debug_agent, tmp_path):
  """seq.judges: each judge M trains on from round k-1's checkpoints like M, not from scratch
  (before, a round trained its judges anew to round k-1's steps plus iterate.seq_steps)."""
  root = copy_run(debug_agent, str(tmp_path / 'run'))
  base = runs.Run(root)
  base.mark_done('evaluate')
  judges = os.path.join(base.stage_dir('seq'), runs.JUDGES)
  # Judge 1 with checkpoints (M's, as a stand-in); judge 2 never started: nothing to carry.
  shutil.copytree(os.path.join(base.stage_dir('seq'), 'checkpoints'),
                  os.path.join(judges, '1', 'checkpoints'))
  os.makedirs(os.path.join(judges, '2'))
  assert iterate.judge_indices(base) == [1]
  round1 = iterate.prepare(root, 1, config_lib.IterateConfig(iterations=1))
  carried = os.path.join(round1.stage_dir('seq'), runs.JUDGES, '1', 'checkpoints')
  source = os.path.join(judges, '1', 'checkpoints')
  assert sorted(os.listdir(carried)) == sorted(os.listdir(source))
  for name in os.listdir(source):
    with open(os.path.join(source, name), 'rb') as a, open(os.path.join(carried, name), 'rb') as b:
      assert a.read() == b.read(), name
  assert not os.path.exists(os.path.join(round1.stage_dir('seq'), runs.JUDGES, '2'))
  # A judge the round has started keeps its own checkpoints on a rerun.
  mine = os.path.join(carried, 'started_here')
  fileio.write_text(mine, 'x')
  iterate.prepare(root, 1, config_lib.IterateConfig(iterations=1))
  assert os.path.exists(mine)


def test_collecting_with_a_controller_needs_a_trained_one(debug_data, tmp_path):
  root = copy_run(debug_data, str(tmp_path / 'run'))
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'collect_rollouts.py'), f'--run_dir={root}',
       '--config.collect.policy=controller', f'--config.collect.controller_run={root}',
       '--config.collect.num_rollouts=8'],
      capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'has no trained V (VAE)' in result.stderr and 'Traceback' not in result.stderr
  assert len(rollouts.list_indices(os.path.join(root, 'rollouts'))) == 6


def test_exploration_noise_stays_in_the_action_space():
  import gymnasium as gym  # pylint: disable=import-outside-toplevel
  from wm import agent  # pylint: disable=import-outside-toplevel
  from wm.models.controller import Controller  # pylint: disable=import-outside-toplevel
  space = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))

  class World:  # only what Agent.explore reads (no V or M is stepped here)
    controller = Controller('z', 4, 0, space)

  noisy = agent.Agent.__new__(agent.Agent)
  noisy.world, noisy.noise, noisy.rng = World(), 0.5, np.random.default_rng(0)
  actions = np.stack([noisy.explore(np.array([0.9, 0.5, 0.0], np.float32)) for _ in range(500)])
  assert (actions >= space.low).all() and (actions <= space.high).all()
  assert actions[:, 1].std() > 0.2  # noise of std 0.5 x the range, clipped
  assert (actions[:, 0] == 1.0).any() and (actions[:, 2] == 0.0).any()  # clipped at the bounds
