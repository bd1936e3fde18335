"""The controller's shapes and squashing, the Policy built from V+M+C, dreams, and evaluate.py.

V and M are randomly initialised real ConvVAE and MDNRNN at debug sizes (tests/controller_models.py).
"""

import json
import os
import re

import gymnasium as gym
import numpy as np
import pytest
import tensorflow as tf

from conftest import copy_run, debug_config, run_script
from wm import envs
from wm.infra import runs
from wm.agent import Agent, WorldModel
from wm.artifacts import load_params, save_params
from wm.dream import Dream
from wm.errors import ConfigError, DataError
from wm.models.controller import Controller, parse_line_order

CAR_ACTIONS = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))


def test_paper_controller_sizes():
  assert Controller('zh', 32, 256, CAR_ACTIONS).num_params == 867  # the paper's count
  assert Controller('z', 32, 256, CAR_ACTIONS).num_params == 32 * 3 + 3
  assert Controller('zh_hidden', 32, 256, CAR_ACTIONS, 40).num_params == 288 * 40 + 40 + 40 * 3 + 3
  doom = gym.spaces.Discrete(3)  # the paper's Doom C: [z, c, h] of z 64 and an LSTM of 512
  assert Controller('zch', 64, 512 + 512, doom).num_params == (64 + 1024) * 3 + 3
  # ... and with its one output cut into the 3 actions: the paper's 1,088 weights and a bias
  assert Controller('zch', 64, 512 + 512, doom, discrete='line').num_params == 1088 + 1


@pytest.mark.parametrize('inputs', ['z', 'zh', 'zh_hidden'])
def test_batched_rows_match_single_rows_and_stay_in_bounds(inputs):
  c = Controller(inputs, 4, 5, CAR_ACTIONS, hidden_units=6)
  rng = np.random.default_rng(0)
  params = rng.normal(size=(7, c.num_params)) * 3
  z, h = rng.normal(size=(7, 4)), rng.normal(size=(7, 5))
  actions = c(params, z, h).numpy()
  for i in range(7):
    single = c(params[i:i + 1], z[i:i + 1], h[i:i + 1]).numpy()[0]
    np.testing.assert_allclose(actions[i], single, rtol=1e-5, atol=1e-6)
  assert actions[:, 0].min() >= -1 and actions[:, 0].max() <= 1
  assert actions[:, 1:].min() >= 0 and actions[:, 1:].max() <= 1
  assert actions[:, 0].min() < 0 < actions[:, 0].max()  # steering uses both directions


def test_linear_controller_is_w_times_inputs_plus_b():
  c = Controller('zh', 2, 3, CAR_ACTIONS)
  rng = np.random.default_rng(1)
  params = rng.normal(size=c.num_params)
  w = c.unflatten(params)
  np.testing.assert_array_equal(c.flatten(w), params)
  x = rng.normal(size=5)
  raw = c.raw(params[None], x[None, :2], x[None, 2:]).numpy()[0]
  np.testing.assert_allclose(raw, x @ w['w0'] + w['b0'], rtol=1e-5)
  squashed = c.squash(tf.constant(raw[None], tf.float32)).numpy()[0]
  np.testing.assert_allclose(squashed, [np.tanh(raw[0]), *(np.tanh(raw[1:]) + 1) / 2], rtol=1e-5)
  with pytest.raises(ValueError, match='expected'):
    c.unflatten(params[:-1])


def test_discrete_actions_are_one_hot():
  c = Controller('z', 3, 0, gym.spaces.Discrete(4))
  actions = c(np.random.default_rng(2).normal(size=(5, c.num_params)),
              np.ones((5, 3)), None).numpy()
  np.testing.assert_array_equal(actions.sum(axis=1), 1)
  assert set(np.unique(actions)) <= {0.0, 1.0}


def test_a_line_controller_cuts_its_one_output_into_the_actions_in_their_order():
  # TakeCover's Discrete(3) is still, right, left: from -1 to 1 the line reads left, still, right
  c = Controller('z', 1, 0, gym.spaces.Discrete(3), discrete='line', line_order=(2, 0, 1))
  assert c.num_params == 2  # w [1, 1] and b [1]
  raw = np.arctanh([-0.99, -0.34, -0.32, 0.0, 0.32, 0.34, 0.99])  # tanh: bins at -1/3 and 1/3
  actions = c(np.tile([1.0, 0.0], (len(raw), 1)), raw[:, None], None).numpy()
  np.testing.assert_array_equal(actions.argmax(axis=1), [2, 2, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(actions.sum(axis=1), 1)
  default = Controller('z', 1, 0, gym.spaces.Discrete(4), discrete='line')
  four = default(np.tile([1.0, 0.0], (4, 1)), np.arctanh([[-0.9], [-0.1], [0.1], [0.9]]), None)
  np.testing.assert_array_equal(four.numpy().argmax(axis=1), [0, 1, 2, 3])  # the actions' order


def test_a_line_controller_refuses_box_actions_and_a_wrong_order():
  with pytest.raises(ConfigError, match='discrete=argmax'):
    Controller('z', 3, 0, CAR_ACTIONS, discrete='line')
  with pytest.raises(ConfigError, match='line_order=2,0,0 is not an order of the 3 actions'):
    Controller('z', 3, 0, gym.spaces.Discrete(3), discrete='line', line_order=(2, 0, 0))
  # the argmax reads no order: one given (a preset's, say) is left unused, not refused
  assert Controller('z', 3, 0, gym.spaces.Discrete(3), line_order=(2, 0, 0)).line_order == ()
  with pytest.raises(ConfigError, match='controller.discrete=.nearest. is not one of'):
    Controller('z', 3, 0, gym.spaces.Discrete(3), discrete='nearest')
  with pytest.raises(ConfigError, match='not a comma-separated list'):
    parse_line_order('2;0;1')
  assert parse_line_order('2, 0,1') == (2, 0, 1) and parse_line_order('') == ()


def _debug_config():
  return debug_config()


def test_agent_is_a_policy_with_panels_info(controller_models):
  config = _debug_config()
  world = WorldModel.load(runs.Run(controller_models), config)
  agent = Agent(world, np.random.default_rng(3).normal(size=world.controller.num_params))
  env = envs.make(config.env)
  frame = env.reset(seed=5)
  agent.reset(5)
  steps = []
  for _ in range(3):
    step = agent.act(frame)
    frame, *_ = env.step(step.action)
    steps.append(step)
  info = steps[-1].info
  assert info['mu'].shape == info['logvar'].shape == (world.encoder.z_size,)
  assert info['h'].shape == (world.seq.feature_size,)
  assert set(info['prediction']) >= {'reward', 'done_logit', 'means'}
  np.testing.assert_array_equal(info['action'], steps[-1].action)
  assert not np.array_equal(steps[0].info['h'], steps[-1].info['h'])  # M's state advances


def test_zch_reads_the_lstm_cell_and_hidden_state(controller_models):
  config = _debug_config()
  config.controller.inputs = 'zch'
  world = WorldModel.load(runs.Run(controller_models), config)
  seq = world.seq
  assert world.controller.h_size == seq.feature_size + seq.cell_size == 2 * seq.feature_size
  rng = np.random.default_rng(6)
  state = seq.initial_state(2)
  for _ in range(3):  # a state whose c and h differ
    _, state = seq.step(tf.constant(rng.normal(size=(2, seq.z_size)), tf.float32),
                        tf.constant(rng.uniform(size=(2, 3)), tf.float32), state)
  h, c = state
  assert not np.allclose(h.numpy(), c.numpy())
  memory = world.controller.memory(seq, state).numpy()
  np.testing.assert_array_equal(memory, np.concatenate([c.numpy(), h.numpy()], axis=1))
  # The agent and the dream act on it: only the weights on c change what a zch controller does.
  params = rng.normal(size=(6, world.controller.num_params))
  weights_on_c = slice(seq.z_size * 3, (seq.z_size + seq.cell_size) * 3)
  no_c = params.copy()
  no_c[:, weights_on_c] = 0
  run = runs.Run(controller_models)
  dream = Dream.load(world, run, max_steps=20, temperature=1.0)
  assert not np.array_equal(dream.evaluate(params, 2, seed=3), dream.evaluate(no_c, 2, seed=3))
  zh_config = _debug_config()
  zh = WorldModel.load(run, zh_config)
  zh_params = np.delete(no_c, weights_on_c, axis=1)  # [z, h] rows of the same weights
  np.testing.assert_allclose(Dream.load(zh, run, max_steps=20, temperature=1.0)
                             .evaluate(zh_params, 2, seed=3),
                             dream.evaluate(no_c, 2, seed=3), rtol=1e-5)


def test_zch_needs_a_cell_state(tmp_path):
  import controller_models  # pylint: disable=import-outside-toplevel
  run = runs.Run(controller_models.write(str(tmp_path), seq='transformer'))
  config = _debug_config()
  config.seq.model, config.controller.inputs = 'transformer', 'zch'
  with pytest.raises(ConfigError, match='controller.inputs=zch.*Transformer has none'):
    WorldModel.load(run, config)


def test_mismatched_models_are_refused(controller_models, tmp_path):
  config = _debug_config()
  config.env.name = 'CartPole-v1'  # 2 discrete actions; M was built for 3
  with pytest.raises(DataError, match='actions of size 3'):
    WorldModel.load(runs.Run(controller_models), config)


def test_dream_is_reproducible_and_depends_on_the_controller(controller_models):
  config = _debug_config()
  run = runs.Run(controller_models)
  world = WorldModel.load(run, config)
  dream = Dream.load(world, run, max_steps=30, temperature=1.15)
  params = np.random.default_rng(4).normal(size=(6, world.controller.num_params)) * 2
  first = dream.evaluate(params, trials=3, seed=7)
  assert first.shape == (6,) and np.isfinite(first).all()
  np.testing.assert_array_equal(first, dream.evaluate(params, trials=3, seed=7))
  assert not np.array_equal(first, dream.evaluate(params, trials=3, seed=8))
  assert len(np.unique(first)) > 1  # candidates differ


def test_dream_with_the_transformer(tmp_path):
  import controller_models  # pylint: disable=import-outside-toplevel
  run = runs.Run(controller_models.write(str(tmp_path), seq='transformer'))
  config = _debug_config()
  config.seq.model = 'transformer'
  world = WorldModel.load(run, config)
  dream = Dream.load(world, run, max_steps=15, temperature=1.0)  # longer than its context
  params = np.random.default_rng(5).normal(size=(3, world.controller.num_params))
  returns = dream.evaluate(params, trials=2, seed=1)
  assert returns.shape == (3,) and np.isfinite(returns).all()
  # Its key/value caches leave the batch with their ended episodes as the LSTM's state does
  # (ends at a tenth of the odds M gives: lives of several stretches).
  dream = Dream.load(world, run, max_steps=15, temperature=1.0, done_odds=0.1)
  batch = np.repeat(params, 4, axis=0)
  z0, seed = dream.start.draw(len(batch), np.random.default_rng(6)), np.array([8, 9])
  whole = dream.returns(batch, z0, seed)
  dream.compact_every = 3
  sizes = _stretch_sizes(dream)
  dropping = dream.returns(batch, z0, seed)
  np.testing.assert_allclose(dropping[0], whole[0], rtol=1e-5, atol=1e-5)
  assert dropping[1] == whole[1] and sizes[-1] < len(batch), sizes


def test_evaluate_random_baseline(controller_models, tmp_path):
  run_dir = copy_run(controller_models, str(tmp_path / 'run'))
  runs.Run(run_dir).mark_done('evaluate', output='result.json', mean=123.0)  # the run's score
  out = run_script('evaluate', f'--run_dir={run_dir}', '--policy=random', '--episodes=2',
                   '--output=random.json', '--config.env.max_steps=20',
                   '--config.env.render_scale=0.5')
  result = json.load(open(os.path.join(run_dir, 'evaluate', 'random.json')))
  assert result['policy'] == 'random' and len(result['returns']) == 2
  assert result['render_scale'] == 1.0  # scores are on the environment's own frames
  assert f'{result["mean"]:.1f} +- {result["std"]:.1f}' in out.stdout
  # A side result: the run's own evaluation still marks the stage done, and its score stands.
  done = json.load(open(os.path.join(run_dir, 'evaluate', 'DONE')))
  assert (done['output'], done['mean']) == ('result.json', 123.0), done


def test_parameter_files_are_checked(tmp_path):
  c = Controller('zh', 4, 5, CAR_ACTIONS)
  params = np.arange(c.num_params, dtype=np.float64)
  path = str(tmp_path / 'best.npz')
  with pytest.raises(DataError, match='train the controller first'):
    load_params(path, c)
  save_params(path, params, c, score=1.0)
  np.testing.assert_array_equal(load_params(path, c), params)
  with pytest.raises(DataError, match="inputs='z'"):
    load_params(path, Controller('z', 4, 5, CAR_ACTIONS))
  with open(path, 'r+b') as f:
    f.truncate(50)
  with pytest.raises(DataError, match='not a controller parameter file'):
    load_params(path, c)


def test_training_patience_ends_episodes_without_reward(controller_models):
  from wm import evaluation
  config = debug_config()
  config.env.max_steps = 60
  seeds = np.array([3, 4])
  full, early = (evaluation.Worker(config, controller_models) for _ in range(2))
  whole, cut = full.play(None, seeds), early.play(None, seeds, patience=5)
  assert full.steps == 2 * 60  # whole episodes
  limit = config.env.agent_steps()
  assert whole.steps.tolist() == [limit, limit] and not whole.ended.any()  # the time limit
  # A random car from a standing start rarely reaches a new tile: with patience 5 each episode
  # ends 5 steps after its last reward.
  assert early.steps < 2 * 20, early.steps
  assert cut.steps.sum() == early.steps and not cut.ended.any()  # the patience, not the game
  assert (cut.returns > whole.returns).all()  # fewer -0.1 frames paid
  np.testing.assert_array_equal(early.evaluate(None, seeds, patience=5), cut.returns)
  table = evaluation.Outcomes(np.array([1.5, -2.0]), np.array([3, 7]), np.array([True, False]))
  back = evaluation.Outcomes.from_array(table.to_array())
  assert back.returns.tolist() == [1.5, -2.0] and back.steps.tolist() == [3, 7]
  assert back.ended.tolist() == [True, False]


def test_ended_real_episodes_leave_the_batch_and_no_return_changes(controller_models):
  # An episode that ended leaves the batch V+M+C steps, its M state and parameters with it; the
  # others play on as they would alone.
  from wm import evaluation
  config = debug_config()
  config.env.max_steps = 240
  seeds = np.array([3, 4, 5, 6])
  worker = evaluation.Worker(config, controller_models)
  controller, rng = worker.world.controller, np.random.default_rng(1)
  params = []
  for gas in (4.0, -4.0, 2.0, -4.0):  # cars that drive on collect tiles longer than idle ones
    weights = controller.unflatten(rng.normal(size=controller.num_params) * 0.1)
    weights['b0'] = np.array([0.0, gas, -4.0])  # steering, gas, brake
    params.append(controller.flatten(weights))
  params = np.array(params)
  sizes, act = [], worker.world.act

  def counted(frames, state, rows):
    sizes.append(int(frames.shape[0]))
    return act(frames, state, rows)
  worker.world.act = counted
  together = worker.play(params, seeds, patience=12)
  assert sizes[0] == len(seeds) and sizes[-1] < len(seeds), sizes
  assert sum(sizes) == together.steps.sum()  # no step of an ended episode was computed
  assert len(set(together.steps.tolist())) > 1, together.steps  # they ended apart
  for j in range(len(seeds)):
    alone = evaluation.Worker(config, controller_models).play(params[j:j + 1], seeds[j:j + 1],
                                                               patience=12)
    assert alone.steps[0] == together.steps[j]
    np.testing.assert_allclose(alone.returns[0], together.returns[j], rtol=1e-5, atol=1e-4)


def test_rest_low_leaves_one_sided_actions_off():
  # Steering [-1, 1] is tanh either way; gas and brake [0, 1] rest at 0 instead of 0.5.
  z = np.array([[0.0, 0.0], [3.0, -3.0]], np.float32)
  for rest, at_zero in (('middle', [0.0, 0.5, 0.5]), ('low', [0.0, 0.0, 0.0])):
    c = Controller('z', 2, 0, CAR_ACTIONS, rest=rest)
    w = {'w0': np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), 'b0': np.zeros(3)}
    params = np.repeat(c.flatten(w)[None], 2, axis=0)
    actions = c(params, z, None).numpy()
    np.testing.assert_allclose(actions[0], at_zero, atol=1e-6)
    t = np.tanh(3.0)
    np.testing.assert_allclose(actions[1], [t, t if rest == 'low' else (t + 1) / 2,
                                            t if rest == 'low' else (t + 1) / 2], atol=1e-6)
  with pytest.raises(ConfigError, match='controller.rest'):
    Controller('z', 2, 0, CAR_ACTIONS, rest='sideways')


def test_parameter_files_remember_rest(tmp_path):
  low = Controller('z', 2, 0, CAR_ACTIONS, rest='low')
  path = str(tmp_path / 'best.npz')
  save_params(path, np.zeros(low.num_params), low, score=0.0)
  np.testing.assert_array_equal(load_params(path, low), np.zeros(low.num_params))
  with pytest.raises(DataError, match='controller.rest'):
    load_params(path, Controller('z', 2, 0, CAR_ACTIONS, rest='middle'))


def test_parameter_files_remember_how_discrete_actions_are_read(tmp_path):
  doom = gym.spaces.Discrete(3)
  line = Controller('z', 2, 0, doom, discrete='line', line_order=(2, 0, 1))
  path = str(tmp_path / 'best.npz')
  save_params(path, np.ones(line.num_params), line, score=0.0)
  np.testing.assert_array_equal(load_params(path, line), np.ones(line.num_params))
  with pytest.raises(DataError, match='discrete=line line_order=2,0,1, the config as '
                     'discrete=line line_order=0,1,2'):
    load_params(path, Controller('z', 2, 0, doom, discrete='line'))
  # an argmax controller of the same parameter count (one action): the reading differs
  one = gym.spaces.Discrete(1)
  save_params(path, np.ones(3), Controller('z', 2, 0, one), score=0.0)
  with pytest.raises(DataError, match='as discrete=argmax, the config as discrete=line'):
    load_params(path, Controller('z', 2, 0, one, discrete='line'))


def test_dream_episodes_end_with_m_s_done_probability():
  # A death the data shows at 5% a step must end about 5% of dream steps: thresholding at 0.5
  # never ends them, and a dream that never ends is too easy (it scored 2090 where the game
  # gave 200 in TakeCover).
  from wm.dream import Dream
  logit = tf.fill([20000], float(np.log(0.05 / 0.95)))
  seed, rows = tf.constant([3, 4], tf.int64), tf.range(20000)  # the batch's rows: all
  sample = Dream.__new__(Dream)
  sample.done_rule, sample.done_shift = 'sample', 0.0
  ended = sample._ends(logit, rows, 20000, seed).numpy().mean()
  assert 0.04 < ended < 0.06, ended
  threshold = Dream.__new__(Dream)
  threshold.done_rule, threshold.done_shift = 'threshold', 0.0
  assert threshold._ends(logit, rows, 20000, seed).numpy().sum() == 0
  assert threshold._ends(-logit, rows, 20000, seed).numpy().all()
  expected = Dream.__new__(Dream)  # no draw: every episode ends by that probability, 5%
  expected.done_rule, expected.done_shift = 'expected', 0.0
  np.testing.assert_allclose(expected._ends(logit, rows, 20000, seed).numpy(), 0.05, rtol=1e-5)
  # controller.dream_done_odds=19 turns odds 1:19 into 1:1: half the steps end.
  cautious = Dream.__new__(Dream)
  cautious.done_rule, cautious.done_shift = 'sample', float(np.log(19.0))
  ended = cautious._ends(logit, rows, 20000, seed).numpy().mean()
  assert 0.48 < ended < 0.52, ended


def test_expected_dream_is_the_mean_of_sampled_dreams(controller_models):
  # dream_done=expected weighs each reward by the probability of being alive: on the same latent
  # paths (same starts and seed) it is what `sample` gives on average over its end draws, with
  # less spread.
  config = _debug_config()
  run = runs.Run(controller_models)
  world = WorldModel.load(run, config)
  rng = np.random.default_rng(9)
  batch = np.repeat(rng.normal(size=(1, world.controller.num_params)), 4000, axis=0)
  sample = Dream.load(world, run, max_steps=30, temperature=1.0)
  z0, seed = sample.start.draw(len(batch), rng), np.array([5, 6])
  drawn, _ = sample.returns(batch, z0, seed)
  expected, _ = Dream.load(world, run, max_steps=30, temperature=1.0,
                           done_rule='expected').returns(batch, z0, seed)
  assert len(np.unique(drawn.round(4))) > 100  # episodes ended at many steps
  difference = drawn - expected
  assert abs(difference.mean()) < 4 * difference.std() / np.sqrt(len(batch)), difference.mean()
  assert expected.std() < drawn.std()
  with pytest.raises(ConfigError, match='dream_done'):
    config.controller.dream_done = 'median'
    from wm import config as config_lib  # pylint: disable=import-outside-toplevel
    config_lib.validate(config)


def test_a_dream_with_other_ends_is_the_same_dream_ended_by_its_own_rule(controller_models):
  # controller.keep=select's dream: Dream.with_ends plays what a dream loaded with that rule
  # plays, with the same Ms; the dream it came from keeps its own rule.
  run, world, batch, sample, z0 = _unjudged_dream(controller_models, candidates=25, rng_seed=3)
  seed = np.array([7, 8])
  before, _ = sample.returns(batch, z0, seed)
  threshold = sample.with_ends('threshold', 4.0)
  loaded, _ = Dream.load(world, run, max_steps=30, temperature=1.0, done_rule='threshold',
                         done_odds=4.0).returns(batch, z0, seed)
  np.testing.assert_allclose(threshold.returns(batch, z0, seed)[0], loaded, rtol=1e-5)
  assert not np.allclose(loaded, before)  # another rule, other returns
  np.testing.assert_allclose(sample.returns(batch, z0, seed)[0], before, rtol=1e-5)
  assert threshold.world is sample.world and sample.done_rule == 'sample'


def _unjudged_dream(run_dir: str, candidates: int, rng_seed: int):
  """(run, world, 4 rows of each of `candidates` random controllers, the dream of the run's M
  alone over 30 steps, start latents for the rows)."""
  run = runs.Run(run_dir)
  world = WorldModel.load(run, debug_config())
  rng = np.random.default_rng(rng_seed)
  batch = np.repeat(rng.normal(size=(candidates, world.controller.num_params)), 4, axis=0)
  plain = Dream.load(world, run, max_steps=30, temperature=1.0)
  return run, world, batch, plain, plain.start.draw(len(batch), rng)


def test_dream_judges_play_their_share_in_their_own_world(debug_world_model):
  # controller.dream_checkpoints: an earlier M's world plays an equal share of every candidate's
  # episodes, the final M still giving the controller its memory. Judged by M's last checkpoint
  # (the export's own weights) the dream is the unjudged one row for row; judged by step 10's M,
  # the final M's rows are unchanged and the judge's differ.
  run, world, batch, plain, z0 = _unjudged_dream(debug_world_model, candidates=3, rng_seed=11)
  seed = np.array([2, 3])
  unjudged, _ = plain.returns(batch, z0, seed)
  itself, _ = Dream.load(world, run, max_steps=30, temperature=1.0,
                         checkpoints=[20]).returns(batch, z0, seed)
  np.testing.assert_allclose(itself, unjudged, rtol=1e-5)
  earlier = Dream.load(world, run, max_steps=30, temperature=1.0, checkpoints=[10])
  judged, _ = earlier.returns(batch, z0, seed)
  np.testing.assert_allclose(judged[:6], unjudged[:6], rtol=1e-5)
  assert not np.allclose(judged[6:], unjudged[6:])
  # A candidate's episodes: half in each world; fitness=worst is the lower world's mean.
  params = batch[::4]
  episodes = earlier.episodes(params, 4, seed=5)
  assert episodes.shape == (3, 4)
  worst = Dream.load(world, run, max_steps=30, temperature=1.0, checkpoints=[10],
                     fitness='worst')
  np.testing.assert_allclose(worst.evaluate(params, 4, seed=5),
                             episodes.reshape(3, 2, 2).mean(axis=2).min(axis=1), rtol=1e-6)
  np.testing.assert_allclose(earlier.evaluate(params, 4, seed=5), episodes.mean(axis=1))
  with pytest.raises(ConfigError, match='multiples of 2'):
    earlier.episodes(params, 3, seed=5)


def test_every_ms_end_counts_on_every_episode_with_done_from_all(debug_world_model):
  # controller.dream_done_from=all: each row's world is still its own M's, but every M steps on
  # every row and the likeliest end counts. Judged by M itself, the dream is the unjudged one;
  # judged by step 10's M, the final M's rows end by that judge's ends too where they are likelier
  # (with dream_done=expected no end is drawn, so a likelier end can only shorten a life), and
  # the judge's rows keep the judge's world.
  run, world, batch, _, z0 = _unjudged_dream(debug_world_model, candidates=3, rng_seed=12)
  seed = np.array([4, 5])

  def dream(step: int, done_from: str, every: int = 30, rule: str = 'expected') -> Dream:
    made = Dream.load(world, run, max_steps=30, temperature=1.0, checkpoints=[step],
                      done_rule=rule, done_from=done_from)
    made.compact_every = every
    return made

  own, own_steps = dream(10, 'own').returns(batch, z0, seed)
  itself, _ = dream(20, 'all').returns(batch, z0, seed)
  np.testing.assert_allclose(itself, dream(20, 'own').returns(batch, z0, seed)[0], rtol=1e-5)
  judged, judged_steps = dream(10, 'all').returns(batch, z0, seed)
  assert not np.allclose(judged[:6], own[:6])  # the judge now ends M's episodes too
  assert judged_steps < own_steps
  # Ended episodes leaving the batch change nothing: the judge's state leaves with its row.
  whole, whole_steps = dream(10, 'all', rule='sample').returns(batch, z0, seed)
  leaving = dream(10, 'all', every=3, rule='sample')
  sizes = _stretch_sizes(leaving)
  dropping, dropping_steps = leaving.returns(batch, z0, seed)
  np.testing.assert_allclose(dropping, whole, rtol=1e-5, atol=1e-5)
  assert dropping_steps == whole_steps and sizes[-1] < len(batch), sizes


def _stretch_sizes(dream: Dream) -> list[int]:
  """Records the batch size of every compiled stretch of steps that `dream` runs."""
  sizes, run = [], dream._stretch

  def recorded(*args):
    sizes.append(int(args[6].shape[0]))  # params [rows, n]
    return run(*args)

  dream._stretch = recorded
  return sizes


def test_ended_dream_episodes_leave_the_batch_and_no_return_changes(debug_world_model):
  # Between stretches of compact_every steps the episodes that ended leave the batch (with
  # long-tailed lives, one episode at the cap kept every row stepping); each row still draws
  # what it would in the whole batch, so the returns are one long stretch's, with a judge's
  # block of rows and dropout masks leaving too.
  run, world, batch, _, z0 = _unjudged_dream(debug_world_model, candidates=6, rng_seed=13)

  def dream(every: int) -> Dream:
    made = Dream.load(world, run, max_steps=30, temperature=1.0, checkpoints=[10], dropout=0.3)
    made.compact_every = every
    return made

  whole, dropping = dream(30), dream(3)
  sizes = _stretch_sizes(dropping)
  seed = np.array([6, 7])
  expected, expected_steps = whole.returns(batch, z0, seed)
  got, steps = dropping.returns(batch, z0, seed)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert steps == expected_steps
  assert sizes[0] == len(batch) and sizes[-1] < len(batch), sizes
  assert len(np.unique(expected.round(4))) > 4  # the episodes ended at different steps


def test_common_dream_episodes_are_the_same_for_every_candidate(debug_world_model):
  # controller.dream_common: a world's k-th episode of every candidate starts from the same latent
  # and draws the same noise, end and dropout mask, so two copies of one controller score alike
  # episode for episode (and unlike without it), whatever leaves the batch; another controller
  # plays those episodes its own way.
  run, world, _, _, _ = _unjudged_dream(debug_world_model, candidates=1, rng_seed=14)
  params = np.random.default_rng(15).normal(size=(3, world.controller.num_params))
  params[1] = params[0]

  def dream(common: bool, every: int) -> Dream:
    made = Dream.load(world, run, max_steps=30, temperature=1.0, checkpoints=[10], dropout=0.3,
                      common=common)
    made.compact_every = every
    return made

  common = dream(True, 30).episodes(params, trials=8, seed=21)  # [3 candidates, 2 worlds x 4]
  np.testing.assert_allclose(common[1], common[0], rtol=1e-5, atol=1e-5)
  assert len(np.unique(common[0].round(4))) > 2  # its episodes still differ from each other
  assert not np.allclose(common[2], common[0])  # another controller, other returns
  np.testing.assert_allclose(dream(True, 3).episodes(params, trials=8, seed=21), common,
                             rtol=1e-5, atol=1e-5)
  own = dream(False, 30).episodes(params, trials=8, seed=21)
  assert not np.allclose(own[1], own[0])
  batch, z0, _, draws = dream(True, 30).rows(params, trials=8, seed=21)
  np.testing.assert_array_equal(draws, np.tile(np.arange(4), 3).tolist() +
                                np.tile(np.arange(4, 8), 3).tolist())
  np.testing.assert_array_equal(z0[4:8], z0[:4])
  assert batch.shape == (24, world.controller.num_params)


def test_dream_dropout_gives_every_episode_its_own_mask(debug_world_model):
  # controller.dream_dropout: every row draws one mask at its start (the fraction kept near 1 -
  # rate, scaled by 1 / keep as in training), the same for the same seed; the judges draw their
  # own. The episodes then differ from the unmasked dream's, reproducibly.
  run, world, batch, plain, z0 = _unjudged_dream(debug_world_model, candidates=4, rng_seed=3)
  masked = Dream.load(world, run, max_steps=30, temperature=1.0, checkpoints=[10], dropout=0.5)
  seed = tf.constant([4, 5], tf.int64)
  mask, (judge_mask,) = masked._feature_masks(16, 8, seed)
  values = mask.numpy()
  assert values.shape == (16, world.seq.feature_size) and judge_mask.shape[0] == 8
  assert set(np.unique(values)) == {0.0, 2.0} and 0.3 < (values > 0).mean() < 0.7
  assert len({row.tobytes() for row in values}) == 16  # every episode another M
  np.testing.assert_array_equal(values, masked._feature_masks(16, 8, seed)[0].numpy())
  assert plain._feature_masks(16, 8, seed) == (None, ())
  unmasked, _ = plain.returns(batch, z0, np.array([2, 3]))
  first, _ = masked.returns(batch, z0, np.array([2, 3]))
  np.testing.assert_array_equal(first, masked.returns(batch, z0, np.array([2, 3]))[0])
  assert not np.allclose(first[:8], unmasked[:8])


def test_dream_judge_runs_are_other_runs_ms_on_this_v(debug_world_model, tmp_path):
  # controller.dream_judge_runs: another run's final M, trained on this run's V, judges like a
  # checkpoint. A copy of the run judges with the very same M: the dream is the unjudged one;
  # an M of another V, or a path that is no run, is refused naming why.
  import controller_models  # pylint: disable=import-outside-toplevel  (tests/ is on sys.path)
  run, world, batch, plain, z0 = _unjudged_dream(debug_world_model, candidates=2, rng_seed=12)
  seed = np.array([4, 5])
  twin = copy_run(debug_world_model, str(tmp_path / 'twin'))
  judged = Dream.load(world, run, max_steps=30, temperature=1.0, judge_runs=[twin])
  assert judged.worlds == 2
  np.testing.assert_allclose(judged.returns(batch, z0, seed)[0], plain.returns(batch, z0, seed)[0],
                             rtol=1e-5)
  foreign = controller_models.write(str(tmp_path / 'foreign'), z_size=world.encoder.z_size,
                                    action_size=world.seq.action_size, seed=3)
  with pytest.raises(DataError, match='learned the latents of another V'):
    Dream.load(world, run, max_steps=5, temperature=1.0, judge_runs=[foreign])
  with pytest.raises(DataError, match='not a folder'):
    Dream.load(world, run, max_steps=5, temperature=1.0, judge_runs=[str(tmp_path / 'none')])
  config = debug_config()
  from wm import config as config_lib  # pylint: disable=import-outside-toplevel
  config.controller.dream_judge_runs, config.controller.dream_checkpoints = f'{twin}', '10'
  config.controller.trials = 4
  with pytest.raises(ConfigError, match='controller.trials=4 .*multiples of 3'):
    config_lib.validate(config)


def test_dream_judges_are_checked(debug_world_model):
  run = runs.Run(debug_world_model)
  world = WorldModel.load(run, debug_config())
  with pytest.raises(DataError, match=r'no checkpoint of M at step 15 .*kept: \[10, 20\]'):
    Dream.load(world, run, max_steps=5, temperature=1.0, checkpoints=[15])
  config = debug_config()
  from wm import config as config_lib  # pylint: disable=import-outside-toplevel
  config.controller.dream_checkpoints = '10,x'
  with pytest.raises(ConfigError, match='dream_checkpoints'):
    config_lib.validate(config)
  config.controller.dream_checkpoints, config.controller.trials = '10', 3
  with pytest.raises(ConfigError, match='controller.trials=3 .*multiples of 2'):
    config_lib.validate(config)
  config.controller.trials, config.controller.dream_eval_episodes = 2, 5  # two worlds
  with pytest.raises(ConfigError, match=r"dream's evaluation episodes \(5: .*multiples of 2"):
    config_lib.validate(config)
  config.controller.dream_eval_episodes = -1
  with pytest.raises(ConfigError, match='controller.dream_eval_episodes=-1 must be >= 0'):
    config_lib.validate(config)


def _rank_inputs(run_dir: str, folder, means: list[float], seeds: list[int]):
  """Random controllers for the run's V and M, and a stand-in evaluation for each (only its mean
  and which episodes it scored are read)."""
  world = WorldModel.load(runs.Run(run_dir), debug_config())
  rng = np.random.default_rng(3)
  params, results = [], []
  for i, (mean, seed) in enumerate(zip(means, seeds)):
    params.append(str(folder / f'c{i}.npz'))
    save_params(params[-1], rng.normal(size=world.controller.num_params), world.controller)
    results.append(str(folder / f'r{i}.json'))
    with open(results[-1], 'w') as f:
      json.dump({'mean': mean, 'env': 'CarRacing-v3', 'seed': seed, 'seed_stream': 104,
                 'episodes': 5, 'make_kwargs': ''}, f)
  return f'--params={",".join(params)}', f'--results={",".join(results)}'


def test_rank_dream_ranks_dream_scores_against_real_ones(debug_agent, tmp_path):
  """scripts/rank_dream.py plays every controller in the run's real dream and prints the rank
  correlation of each M's column and of the search's score with the real means."""
  means = [30.0, 10.0, 20.0, 40.0]
  args = _rank_inputs(debug_agent, tmp_path, means, [0] * 4)
  out = run_script('rank_dream', f'--run_dir={debug_agent}', *args, '--episodes=6').stdout
  rows = [line.split() for line in out.splitlines() if line.startswith(str(tmp_path))]
  assert [float(r[1]) for r in rows] == means, out
  dream = np.array([[float(v) for v in r[2:]] for r in rows])  # M, then the search's score
  assert dream.shape == (4, 2) and np.ptp(dream[:, 1]) > 0, out  # the controllers differ

  def rank(x):  # ties share their mean rank
    return np.array([np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x])
  expected = np.corrcoef(rank(dream[:, 1]), rank(np.array(means)))[0, 1]
  printed = re.search(r'searched ([+-][\d.]+)', out)
  assert printed and abs(float(printed[1]) - expected) < 0.006, out
  # Evaluations of other episodes, or a count that does not match, are refused by name.
  params, results = _rank_inputs(debug_agent, tmp_path, means[:3], [0, 0, 1])
  bad = run_script('rank_dream', f'--run_dir={debug_agent}', params, results, check=False)
  assert bad.returncode != 0 and 'scored other episodes' in bad.stderr + bad.stdout, bad
  assert 'Traceback' not in bad.stderr
  bad = run_script('rank_dream', f'--run_dir={debug_agent}', params, results.rsplit(',', 1)[0],
                   check=False)
  assert bad.returncode != 0 and '--results 2' in bad.stderr + bad.stdout, bad
