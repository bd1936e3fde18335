"""wm.infra.pipeline's guards: one pipeline per run dir, and no stage counted done without its DONE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import (DEBUG, REPO, child_pids, copy_run, process_alive, run_script,
                      script_env)
from wm.infra import changes, pipeline, quiet, runs

# Holds the run dir's pipeline lock as a running pipeline does, until killed.
_HOLDER = textwrap.dedent('''
    import os, sys, time
    from wm.infra import fileio
    with fileio.claim(os.path.join(sys.argv[1], '.pipeline')) as held:
      assert held
      print('held', flush=True)
      time.sleep(600)
''')


def _pipeline(run_dir, *args, stages='collect'):
  return subprocess.run([sys.executable, '-m', 'wm', f'--run_dir={run_dir}',
                         f'--config={DEBUG}', f'--stages={stages}', *args], cwd=REPO,
                        env=script_env(), capture_output=True, text=True, timeout=300)


def _wm(*args):
  return subprocess.run([sys.executable, '-m', 'wm', *args], cwd=REPO, env=script_env(),
                        capture_output=True, text=True, timeout=300)


def test_help_lists_the_pipeline_flags():
  result = _wm('--help')
  for flag in ('run_dir', 'config', 'stages', 'parallelism'):
    assert f'  --{flag}:' in result.stdout, (flag, result.stdout[-3000:])


@pytest.mark.parametrize('args,message', [
    (['--config.seed'], '--config.seed needs a value: --config.seed=VALUE'),
    (['--config.seed=many'], "config field seed expects int, got 'many'"),
    (['--nonsense_flag=1'], "Unknown command line flag 'nonsense_flag'"),
    (['--parallelism=two'], '--parallelism'),
    (['--stages=colect'], "--stages: unknown ['colect']"),
    (['stray'], "unexpected arguments ['stray']"),
])
def test_bad_flags_are_one_message_and_exit_2(tmp_path, args, message):
  run_dir = tmp_path / 'run'
  result = _wm(f'--run_dir={run_dir}', f'--config={DEBUG}', *args)
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert message in result.stderr and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert not run_dir.exists()


def test_no_run_dir_is_one_message_and_exit_2():
  result = _wm(f'--config={DEBUG}')
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert 'error: --run_dir is required' in result.stderr, result.stderr[-3000:]


def test_a_second_pipeline_on_a_run_dir_is_refused_naming_the_first(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER, str(tmp_path)], cwd=REPO,
                            env=script_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    second = _pipeline(tmp_path)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f'another pipeline is running in {tmp_path}' in second.stderr
    assert f' {holder.pid})' in second.stderr  # names the holder's pid
    assert 'Traceback' not in second.stderr
    assert not os.path.exists(tmp_path / 'rollouts'), 'the refused pipeline wrote something'
  finally:
    holder.kill()
    holder.wait()
  # The holder died without releasing its lock: the next pipeline takes it over and runs.
  time.sleep(0.2)
  third = _pipeline(tmp_path, '--config.collect.num_rollouts=2', '--config.env.max_steps=10',
                    '--parallelism=1')
  assert third.returncode == 0, third.stderr[-3000:]
  assert runs.Run(str(tmp_path)).is_done('collect')


def test_a_stage_that_exits_0_without_done_stops_the_pipeline(tmp_path, capsys):
  # Half of an array's shares exits 0 and, rightly, writes no DONE: the pipeline must stop there.
  half = pipeline.StageCommand('collect', 'collect_rollouts', ('--num_tasks=2', '--task_index=0'))
  play = pipeline.StageCommand('play', 'play')
  run = runs.Run(str(tmp_path))
  reports, code = pipeline.run_stages(
      run, [half, play], DEBUG, {'collect.num_rollouts': '2', 'env.max_steps': '10'}, 1)
  assert code == pipeline.EXIT_INCOMPLETE
  assert [(r.name, r.status) for r in reports] == [('collect', 'failed')]
  assert 'did not mark itself done' in capsys.readouterr().err
  assert not run.is_done('collect') and not os.path.exists(run.stage_dir('play'))


def test_topping_up_v_redoes_encode_and_refuses_the_old_m(debug_agent, tmp_path):
  # V trained further after encode, M and C used it: nothing may keep running on the old latents.
  run_dir = copy_run(debug_agent, str(tmp_path / 'run'))
  run = runs.Run(run_dir)
  old_encoded = run.fingerprint('encode')
  run_script('train_vae', f'--run_dir={run_dir}', '--config.vae.train_steps=25', config=None)
  assert 'vae' in run.stale_reason('encode')

  evaluate = run_script('evaluate', f'--run_dir={run_dir}', '--episodes=1', check=False,
                        config=None)
  assert evaluate.returncode == 2, evaluate.stderr[-3000:]
  assert 'do not fit each other: encode was made from the vae stage' in evaluate.stderr
  assert 'Traceback' not in evaluate.stderr

  piped = subprocess.run([sys.executable, '-m', 'wm', f'--run_dir={run_dir}',
                          '--stages=encode,seq,controller'], cwd=REPO, env=script_env(),
                         capture_output=True, text=True, timeout=600)
  assert piped.returncode == 2, piped.stderr[-3000:]
  assert 'encode: redoing it: encode was made from the vae stage' in piped.stdout
  assert 'seq: seq was made from the encode stage' in piped.stderr
  assert 'move RUN/seq away' in piped.stderr
  assert run.is_done('encode') and run.stale_reason('encode') is None
  assert run.fingerprint('encode') != old_encoded  # re-encoded with the new V
  # the stage's output is kept in RUN/logs, and holds none of TensorFlow's start-up notices
  with open(os.path.join(run_dir, 'logs', 'encode.log')) as f:
    log = f.read()
  assert 'encoding' in log and log.rstrip().endswith('== exit status 0')
  shown = (piped.stdout + piped.stderr).splitlines()
  assert not [line for line in shown if quiet.is_boilerplate(line)]
  assert not any('oneDNN' in line or 'cuInit' in line for line in shown)


def test_a_rerun_with_another_config_tops_up_or_refuses_never_skips(debug_data, tmp_path):
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  more = _pipeline(run_dir, '--config.collect.num_rollouts=8', '--parallelism=1',
                   stages='collect,shard')
  assert more.returncode == 0, more.stderr[-3000:]
  assert 'collect: redoing it: collect.num_rollouts 6 -> 8 (a top-up' in more.stdout
  assert 'shard: redoing it: collect was topped up' in more.stdout
  with open(os.path.join(run_dir, 'records', 'train', 'manifest.json')) as f:
    train = json.load(f)['num_rollouts']
  with open(os.path.join(run_dir, 'records', 'valid', 'manifest.json')) as f:
    assert train + json.load(f)['num_rollouts'] == 8

  other = _pipeline(run_dir, '--config.collect.num_rollouts=8', '--config.env.max_steps=30',
                    stages='collect,shard')
  assert other.returncode == 2, other.stderr[-3000:]
  assert 'collect finished with other settings: env.max_steps 40 -> 30' in other.stderr
  assert 'another --run_dir' in other.stderr and 'Traceback' not in other.stderr

  # The exploration noise acts only for policy=controller: a random collection stands. The
  # files' zlib levels change their bytes, not what they hold: finished stages stand.
  same = _pipeline(run_dir, '--config.collect.num_rollouts=8', '--config.collect.action_noise=0.5',
                   '--config.collect.compress_level=0', '--config.records.compress_level=9',
                   stages='collect,shard')
  assert same.returncode == 0, same.stderr[-3000:]
  assert 'collect: done already' in same.stdout and 'shard: done already' in same.stdout


def test_a_field_newer_than_a_stored_config_counts_as_its_default():
  stored = {'seq': {'hidden_size': 256}}  # written before seq.done_weight existed
  now = changes.with_defaults({'seq': {'hidden_size': 256}})
  assert changes.field_changes(runs.flat_fields(changes.with_defaults(stored), ['seq']),
                               runs.flat_fields(now, ['seq'])) == {}
  heavier = dict(now, seq=dict(now['seq'], done_weight=10.0))
  assert changes.field_changes(runs.flat_fields(changes.with_defaults(stored), ['seq']),
                               runs.flat_fields(heavier, ['seq'])) == {
                                   'seq.done_weight': (1.0, 10.0)}


def test_a_stages_size_counts_its_outputs_not_its_snapshots_or_logs(tmp_path):
  for name, size in (('result.json', 5), ('snapshot/code.tar.gz', 100),
                     ('snapshot-seed9/code.tar.gz', 100), ('tb/events', 100),
                     ('progress.json', 100), ('search2.json', 7)):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b'x' * size)
  assert pipeline.folder_size(str(tmp_path)) == (2, 12)


def test_fields_that_act_only_under_a_policy_count_only_under_it():
  random_policy = {'collect': {'policy': 'random', 'action_noise': 0.1, 'controller_run': ''}}
  noisier = {'collect': {'policy': 'random', 'action_noise': 0.3, 'controller_run': 'r'}}
  assert runs.config_key(random_policy, 'collect') == runs.config_key(noisier, 'collect')
  driven = {'collect': dict(random_policy['collect'], policy='controller')}
  driven_noisier = {'collect': dict(noisier['collect'], policy='controller')}
  assert runs.config_key(driven, 'collect') != runs.config_key(driven_noisier, 'collect')


@pytest.mark.skipif(not os.path.exists(f'/proc/{os.getpid()}/task/{os.getpid()}/children'),
                    reason='needs Linux /proc children lists')
def test_a_killed_pipeline_takes_its_running_stage_with_it(tmp_path):
  # A pipeline killed with kill -9 (no chance to forward anything) must not leave its stage
  # running on alone: it would keep writing into the run dir a rerun then shares with it.
  parent = subprocess.Popen(
      [sys.executable, '-m', 'wm', f'--run_dir={tmp_path}', f'--config={DEBUG}',
       '--stages=collect', '--config.collect.num_rollouts=10000', '--parallelism=1'],
      cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while not os.path.exists(tmp_path / 'rollouts' / 'rollout-000000.npz'):
      assert time.time() < deadline and parent.poll() is None, 'the stage never started'
      time.sleep(0.5)
    stage = child_pids(parent.pid)
    assert len(stage) == 1, stage
    parent.kill()
    parent.wait()
    deadline = time.time() + 60
    while process_alive(stage[0]) and time.time() < deadline:
      time.sleep(0.5)
    assert not process_alive(stage[0]), 'the stage kept running after its pipeline was killed'
  finally:
    parent.kill()
    for pid in child_pids(parent.pid) if process_alive(parent.pid) else []:
      os.kill(pid, 9)
  assert not runs.Run(str(tmp_path)).is_done('collect')
