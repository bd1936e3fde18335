"""scripts/train_sequence_model.py as a user runs it: preemption, resume, outputs, errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (DEBUG, REPO, copy_run, debug_config, expected_cpu_kernels, run_script,
                      script_env)
from wm import training
from wm.infra import cli, runs
from wm.stages import seq, shard
from wm.errors import ConfigError
from wm.models import export


def latest_step(run_dir):
  """The step of the latest checkpoint of RUN/seq (or of a judge's folder), None before one."""
  path = os.path.join(run_dir, 'seq', 'checkpoints', 'checkpoint')
  if os.path.basename(os.path.dirname(run_dir)) == 'judges':
    path = os.path.join(run_dir, 'checkpoints', 'checkpoint')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    first = f.readline()  # model_checkpoint_path: "ckpt-12"
  return int(first.strip().strip('"').rsplit('-', 1)[1])


def test_preempted_run_saves_exits_75_and_rerun_continues(synthetic_encoded, tmp_path):
  run_dir = copy_run(synthetic_encoded, str(tmp_path / 'run'))
  argv = [sys.executable, os.path.join(REPO, 'scripts', 'train_sequence_model.py'),
          f'--run_dir={run_dir}', f'--config={DEBUG}',
          '--config.seq.train_steps=100000', '--config.seq.save_every=5']
  process = subprocess.Popen(argv, env=script_env(), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 120
  while latest_step(run_dir) is None and time.time() < deadline and process.poll() is None:
    time.sleep(0.2)
  process.send_signal(signal.SIGUSR1)
  output = process.communicate(timeout=120)[0]
  assert process.returncode == training.EXIT_REQUEUE, output[-3000:]
  stopped = latest_step(run_dir)
  assert stopped and stopped >= 5, output[-3000:]
  assert not os.path.exists(os.path.join(run_dir, 'seq', 'DONE'))

  # The rerun resumes from the saved step and tops up to train_steps, here with its products in
  # bfloat16: seq.precision changes rounding, not what is learned, so the checkpoint goes on.
  result = run_script('train_sequence_model', f'--run_dir={run_dir}',
                      f'--config.seq.train_steps={stopped + 5}', '--config.seq.precision=bfloat16')
  assert f'ckpt-{stopped} at step {stopped}' in result.stderr, result.stderr[-3000:]
  with open(os.path.join(run_dir, 'seq', 'DONE')) as f:
    done = json.load(f)
  assert done['step'] == stopped + 5 and latest_step(run_dir) == stopped + 5
  assert done['device']['precision']['precision'] == 'bfloat16', done['device']
  assert set(done['valid']) == {'loss', 'latent_nll', 'reward_nll', 'done_nll'}
  model = export.load(os.path.join(run_dir, 'seq', 'export'), kind='sequence_model')
  assert (model.z_size, model.action_size) == (4, 3)
  with np.load(os.path.join(run_dir, 'seq', 'initial_latents.npz'), allow_pickle=False) as f:
    assert f['mu'].shape == f['logvar'].shape == (10, 4)
  events = os.listdir(os.path.join(run_dir, 'seq', 'tb'))
  assert events and all(e.startswith('events.out.tfevents') for e in events)

  # Another model over these checkpoints: a clear error, and the finished outputs are kept.
  # (In-process: the same code path the script runs, without another TensorFlow start-up.)
  config = debug_config()
  config.seq.model = 'transformer'
  with pytest.raises(ConfigError, match='checkpoints'):
    seq.train(cli.Stage('seq', config, runs.Run(run_dir), {}))
  assert os.path.exists(os.path.join(run_dir, 'seq', 'DONE'))


def test_trains_on_real_encoded_debug_data(debug_encoded, tmp_path):
  """The stage on the VAE-encoded debug rollouts, with the transformer (the synthetic test above
  runs the MDN-RNN through the script)."""
  run_dir = copy_run(debug_encoded, str(tmp_path / 'run'))
  run_script('train_sequence_model', f'--run_dir={run_dir}', '--config.seq.model=transformer')
  with open(os.path.join(run_dir, 'seq', 'DONE')) as f:
    done = json.load(f)
  assert done['model'] == 'transformer' and done['step'] == 20
  assert done['device']['cpu_kernels'] == expected_cpu_kernels(), done  # the stage asks for oneDNN
  assert all(np.isfinite(v) for v in done['valid'].values()), done
  train = shard.read_manifest(os.path.join(run_dir, 'encoded', 'train'))
  model = export.load(os.path.join(run_dir, 'seq', 'export'), kind='sequence_model')
  assert model.z_size == train['z_size'] and model.max_context == 10
  with np.load(os.path.join(run_dir, 'seq', 'initial_latents.npz'), allow_pickle=False) as f:
    assert f['mu'].shape == (train['num_rollouts'], train['z_size'])
    mu = f['mu']
  state = model.initial_state(len(mu))
  prediction, state = model.step(mu, np.zeros((len(mu), model.action_size), np.float32), state)
  assert model.sample(prediction, 1.0, seed=(0, 1)).shape == mu.shape


def test_diverging_training_stops_with_a_clear_error(synthetic_encoded, tmp_path):
  run_dir = copy_run(synthetic_encoded, str(tmp_path / 'run'))
  config = debug_config()
  config.seq.learning_rate = 1e30  # Adam moves every weight by ~1e30: the loss overflows
  config.seq.grad_clip = 0.0
  with pytest.raises(training.NonFiniteLossError, match='diverged'):
    seq.train(cli.Stage('seq', config, runs.Run(run_dir), {}))
  assert not os.path.exists(os.path.join(run_dir, 'seq', 'export'))


def test_the_same_seed_trains_the_same_m(synthetic_encoded, tmp_path):
  # M's initial weights, the rollouts' order, the windows' offsets and latent samples all come
  # from config.seed: two runs on the same data give the same weights, another seed others.
  weights = {}
  for name, seed in (('first', 0), ('again', 0), ('other', 1)):
    run_dir = copy_run(synthetic_encoded, str(tmp_path / name))
    run_script('train_sequence_model', f'--run_dir={run_dir}', f'--config.seed={seed}',
               '--config.seq.train_steps=15')
    model = export.load(os.path.join(run_dir, 'seq', 'export'), kind='sequence_model')
    weights[name] = model.get_weights()
  assert all(np.array_equal(a, b) for a, b in zip(weights['first'], weights['again']))
  assert not all(np.array_equal(a, b) for a, b in zip(weights['first'], weights['other']))


def test_judges_train_beside_m_in_their_own_processes(synthetic_encoded, tmp_path):
  # --parallelism=2: both judges train in child processes while M trains here, all three at once
  # (waves of two would leave a core idle in the last). SIGTERM to the stage saves all three and
  # exits 75, the children gone with it; the rerun resumes them (--judge outside 1..seq.judges:
  # test_cli.py).
  run_dir = copy_run(synthetic_encoded, str(tmp_path / 'run'))
  flags = ['--config.seq.judges=2', '--parallelism=2', '--config.seq.save_every=5',
           '--config.controller.trials=3', '--config.controller.eval_episodes=3']
  argv = [sys.executable, os.path.join(REPO, 'scripts', 'train_sequence_model.py'),
          f'--run_dir={run_dir}', f'--config={DEBUG}', '--config.seq.train_steps=100000', *flags]
  process = subprocess.Popen(argv, env=script_env(), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  judge_runs = [os.path.join(run_dir, 'seq', 'judges', str(index)) for index in (1, 2)]
  deadline = time.time() + 180
  while any(latest_step(r) is None for r in [run_dir, *judge_runs]) and (
      time.time() < deadline and process.poll() is None):
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=180)[0]
  assert process.returncode == training.EXIT_REQUEUE, output[-3000:]
  for index in (1, 2):
    child = int(re.search(rf'judge {index} trains beside M in process (\d+)', output).group(1))
    with pytest.raises(ProcessLookupError):
      os.kill(child, 0)  # stopped and reaped before the stage exited
    with open(os.path.join(run_dir, 'logs', f'seq-judge{index}.log')) as f:
      assert f'--judge={index} --parallelism=3' in f.read()  # a third of the cores each
  steps = latest_step(run_dir), *map(latest_step, judge_runs)
  assert all(step and step >= 5 for step in steps), (steps, output[-3000:])

  run_script('train_sequence_model', f'--run_dir={run_dir}',
             f'--config.seq.train_steps={max(steps) + 3}', *flags)
  with open(os.path.join(run_dir, 'seq', 'DONE')) as f:
    done = json.load(f)
  judged = []
  for index in (1, 2):
    with open(os.path.join(run_dir, 'seq', 'judges', str(index), 'DONE')) as f:
      judged.append(json.load(f))
    assert judged[-1]['seed'] == index and judged[-1]['step'] == max(steps) + 3
  assert done['judges_valid'] == [j['valid'] for j in judged]
  for index in (1, 2):
    with open(os.path.join(run_dir, 'logs', f'seq-judge{index}.log')) as f:
      assert f'ckpt-{steps[index]} at step {steps[index]}' in f.read()  # resumed, in a child

  # A finished judge asked for again (a job of its own, --judge) is left as it is.
  export_file = os.path.join(run_dir, 'seq', 'judges', '1', 'export', 'model.weights.h5')
  written = os.stat(export_file).st_mtime_ns
  result = run_script('train_sequence_model', f'--run_dir={run_dir}', '--judge=1',
                      f'--config.seq.train_steps={max(steps) + 3}', *flags)
  assert 'judge 1 is trained already' in result.stderr, result.stderr[-3000:]
  assert os.stat(export_file).st_mtime_ns == written


def test_judges_train_after_m_and_judge_the_dream(debug_world_model, tmp_path):
  # seq.judges on a finished run is a top-up: M is kept (no step trained) and one more M, with
  # the next seed and seq.judge_hidden_size, trains into RUN/seq/judges/1; it is part of M's
  # result (its fingerprint: a controller made without it is stale), and the dream lets it play
  # half the episodes.
  from wm.agent import WorldModel  # pylint: disable=import-outside-toplevel
  from wm.dream import Dream  # pylint: disable=import-outside-toplevel
  from wm.errors import DataError  # pylint: disable=import-outside-toplevel
  run_dir = copy_run(debug_world_model, str(tmp_path / 'run'))
  run = runs.Run(run_dir)
  before, weights = run.fingerprint('seq'), export.load(
      os.path.join(run_dir, 'seq', 'export'), kind='sequence_model').get_weights()
  run_script('train_sequence_model', f'--run_dir={run_dir}', '--config.seq.judges=1',
             '--config.seq.judge_hidden_size=8', '--config.controller.trials=2',
             '--config.controller.eval_episodes=2')
  judge_dir = os.path.join(run_dir, 'seq', 'judges', '1')
  with open(os.path.join(judge_dir, 'DONE')) as f:
    judged = json.load(f)
  with open(os.path.join(run_dir, 'seq', 'DONE')) as f:
    done = json.load(f)
  assert judged['seed'] == 1 and judged['step'] == 20 and done['judges_valid'] == [judged['valid']]
  main = export.load(os.path.join(run_dir, 'seq', 'export'), kind='sequence_model')
  assert all(np.array_equal(a, b) for a, b in zip(main.get_weights(), weights))  # M kept
  judge = export.load(os.path.join(judge_dir, 'export'), kind='sequence_model')
  assert judge.hidden_size == 8 and main.hidden_size == 16
  assert not os.path.exists(os.path.join(judge_dir, 'initial_latents.npz'))  # dreams start from M's
  assert done['fingerprint'] == run.fingerprint('seq') != before
  world = WorldModel.load(run, debug_config())
  assert Dream.load(world, run, max_steps=5, temperature=1.0, seq_judges=1).worlds == 2
  with pytest.raises(DataError, match='judge M 2 .*rerun the seq stage'):
    Dream.load(world, run, max_steps=5, temperature=1.0, seq_judges=2)
  # The judge was trained on M's rollouts: asked for a bootstrap judge, the stage says so.
  result = run_script('train_sequence_model', f'--run_dir={run_dir}', '--config.seq.judges=1',
                      '--config.seq.judge_hidden_size=8', '--config.seq.judge_data=bootstrap',
                      '--config.controller.trials=2', '--config.controller.eval_episodes=2',
                      check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert f'{judge_dir} was trained with seq.judge_data=same' in result.stderr
  assert 'Traceback' not in result.stderr
  # Stopped part-way (no DONE, its checkpoints kept), it is not continued on other data either.
  os.remove(os.path.join(judge_dir, 'DONE'))
  result = run_script('train_sequence_model', f'--run_dir={run_dir}', '--config.seq.judges=1',
                      '--config.seq.judge_hidden_size=8', '--config.seq.judge_data=bootstrap',
                      '--config.controller.trials=2', '--config.controller.eval_episodes=2',
                      check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert (f'{judge_dir} started training with seq.judge_data=same' in result.stderr
          and 'Traceback' not in result.stderr), result.stderr[-3000:]
  with pytest.raises(ConfigError, match=r'controller.trials=3 .*seq.judges \(1\)'):
    config = debug_config()
    config.seq.judges, config.controller.trials = 1, 3
    from wm import config as config_lib  # pylint: disable=import-outside-toplevel
    config_lib.validate(config)


def test_a_bootstrap_judge_learns_from_its_own_resample(debug_world_model, tmp_path):
  # seq.judge_data=bootstrap: the judge reads a resample of the rollouts seeded by its seed, and
  # its DONE says what it learned from.
  run_dir = copy_run(debug_world_model, str(tmp_path / 'run'))
  result = run_script('train_sequence_model', f'--run_dir={run_dir}', '--config.seq.judges=1',
                      '--config.seq.judge_hidden_size=8', '--config.seq.judge_data=bootstrap',
                      '--config.controller.trials=2', '--config.controller.eval_episodes=2')
  assert 'bootstrap resample' in result.stderr and '(seed 1)' in result.stderr, result.stderr
  with open(os.path.join(run_dir, 'seq', 'judges', '1', 'DONE')) as f:
    judged = json.load(f)
  assert judged['data'] == 'bootstrap' and judged['seed'] == 1 and judged['step'] == 20
