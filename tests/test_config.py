"""Config: presets load, overrides are typed, bad fields are refused before any work."""

import copy
import dataclasses
import inspect
import os
import re

import pytest

from conftest import debug_config, run_script
from wm import config as config_lib
from wm.errors import ConfigError


@pytest.mark.parametrize('preset', ['debug', 'small', 'paper'])
def test_presets_load_and_validate(preset):
  config = config_lib.validate(config_lib.load(f'configs/carracing.py:{preset}'))
  assert config.preset == preset


def test_paper_preset_has_the_papers_sizes():
  c = config_lib.load('configs/carracing.py:paper')
  assert (c.collect.num_rollouts, c.env.max_steps, c.vae.z_size) == (10000, 1000, 32)
  assert (c.seq.hidden_size, c.seq.num_mixtures) == (256, 5)
  assert (c.controller.population_size, c.controller.trials) == (64, 16)


def test_every_field_has_a_comment():
  sections = [type(getattr(config_lib.Config(), f.name)) for f in dataclasses.fields(config_lib.Config)]
  classes = [config_lib.Config] + [c for c in sections if dataclasses.is_dataclass(c)]
  assert len(classes) > 5
  for cls in classes:
    source = inspect.getsource(cls)
    for field in dataclasses.fields(cls):
      line = re.search(rf'^\s+{field.name}: .*$', source, re.M)
      assert line and '  # ' in line.group(0), (cls.__name__, field.name)


def test_overrides_are_parsed_by_type():
  c = debug_config()
  config_lib.apply_overrides(c, {'collect.num_rollouts': '7', 'vae.learning_rate': '3e-4',
                                 'env.crop_dashboard': 'false', 'collect.policy': 'held'})
  assert (c.collect.num_rollouts, c.vae.learning_rate) == (7, 3e-4)
  assert c.env.crop_dashboard is False and c.collect.policy == 'held'


def test_make_kwargs_are_read_as_literals_else_text():
  parse = config_lib.parse_make_kwargs
  assert parse('') == {}
  assert parse('screen_resolution=RES_160X120') == {'screen_resolution': 'RES_160X120'}
  assert parse('a=1, b=0.5,c=True,d=(1, 2),e=two words') == {
      'a': 1, 'b': 0.5, 'c': True, 'd': (1, 2), 'e': 'two words'}
  for text, message in (('a', "'a' is not key=value"), ('a=1,a=2', 'sets a twice'),
                        ('2x=1', "'2x=1' is not key=value"),
                        ('max_episode_steps=9', 'max_episode_steps is set by env.max_steps'),
                        ('render_mode=human', 'render_mode is set by the stage itself')):
    with pytest.raises(ConfigError, match=re.escape(message)):
      parse(text)


@pytest.mark.parametrize('key,value,message', [
    ('collect.bogus', '1', "unknown config field 'collect.bogus'"),
    ('nosection.x', '1', "unknown config field 'nosection'"),
    ('collect.num_rollouts', '2.5', 'collect.num_rollouts expects int'),
    ('env.crop_dashboard', 'maybe', 'env.crop_dashboard expects bool'),
    ('collect', '3', 'is a section'),
])
def test_bad_overrides_name_the_field(key, value, message):
  c = debug_config()
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_lib.override(c, key, value)


@pytest.mark.parametrize('key,value', [('collect.num_rollouts', '0'),
                                       ('collect.policy', 'clever'),
                                       ('records.valid_fraction', '1.5'),
                                       ('records.compress_level', '10'),
                                       ('collect.hold_max', '0'),
                                       ('controller.dream_generations', '-1'),
                                       ('controller.dream_generations', '5'),  # debug: dream mode
                                       ('controller.warm_generations', '5'),  # the same
                                       ('controller.warm_keep', 'luck'),
                                       ('iterate.warm_generations', '5'),  # search=continue
                                       ('seq.dropout', '1.0'),
                                       ('seq.bucket_steps', '11'),  # debug: sequence_length 10
                                       ('seq.bucket_steps', '-1'),
                                       ('controller.dream_dropout', 'true'),  # seq.dropout 0
                                       ('controller.dream_done_from', 'all'),  # no judges
                                       ('seq.judge_data', 'half')])
def test_impossible_values_are_refused(key, value):
  c = debug_config()
  config_lib.override(c, key, value)
  with pytest.raises(ConfigError, match=re.escape(key)):
    config_lib.validate(c)


def test_packed_rows_are_not_combined_with_buckets():
  c = debug_config()
  config_lib.apply_overrides(c, {'seq.pack': 'true', 'seq.bucket_steps': '5'})
  with pytest.raises(ConfigError, match=r'seq\.pack=True cannot be combined with seq\.bucket_steps'):
    config_lib.validate(c)
  config_lib.apply_overrides(c, {'seq.bucket_steps': '0'})
  config_lib.validate(c)


def test_every_ms_end_is_not_combined_with_dropout_masks():
  c = debug_config()
  config_lib.apply_overrides(c, {'seq.judges': '1', 'controller.dream_done_from': 'all',
                                 'controller.trials': '2', 'controller.eval_episodes': '2'})
  config_lib.validate(c)
  config_lib.apply_overrides(c, {'seq.dropout': '0.2', 'controller.dream_dropout': 'true'})
  with pytest.raises(ConfigError, match='dream_done_from.*dream_dropout'):
    config_lib.validate(c)


def test_one_warm_start_at_a_time():
  c = debug_config()
  config_lib.apply_overrides(c, {'controller.mode': 'real', 'controller.warm_generations': '5'})
  config_lib.validate(c)
  unused = copy.deepcopy(c)  # warm_trials counts only with a warm start: 3 worlds, 16 trials
  config_lib.apply_overrides(unused, {'controller.warm_generations': '0', 'seq.judges': '2',
                                      'controller.trials': '3', 'controller.eval_episodes': '3'})
  config_lib.validate(unused)
  config_lib.override(unused, 'controller.warm_generations', '5')
  with pytest.raises(ConfigError, match='controller.warm_trials'):
    config_lib.validate(unused)
  config_lib.override(unused, 'controller.warm_generations', '0')  # select_episodes likewise
  config_lib.override(unused, 'controller.keep', 'select')
  with pytest.raises(ConfigError, match='controller.select_episodes=128 must be a multiple of 3'):
    config_lib.validate(unused)
  for key, value in (('controller.start_from', 'runs/other'), ('controller.dream_generations', '2')):
    both = copy.deepcopy(c)
    config_lib.override(both, key, value)
    with pytest.raises(ConfigError, match=re.escape(key)):
      config_lib.validate(both)


def test_json_round_trip_refuses_unknown_fields():
  c = debug_config()
  assert config_lib.from_dict(config_lib.to_dict(c)) == c
  data = config_lib.to_dict(c)
  data['vae']['mystery'] = 1
  with pytest.raises(ConfigError, match='vae.mystery'):
    config_lib.from_dict(data)


@pytest.mark.parametrize('args,message', [
    (['--config.collect.num_rollouts=-3'], 'collect.num_rollouts must be > 0'),
    (['--config.collect.bogus=1'], "unknown config field 'collect.bogus'"),
    (['--config=configs/nothing.py:debug'], "config file 'configs/nothing.py' not found"),
    (['--parallelism=0'], '--parallelism=0: 0 is not a positive integer'),
    (['--num_tasks=2', '--task_index=2'], '--task_index must be smaller than --num_tasks'),
    (['--nonsense_flag=1'], 'nonsense_flag'),
    (['--config.env.make_kwargs=bogus=1'],
     "could not be made with env.make_kwargs='bogus=1' (TypeError:"),
])
def test_script_refuses_bad_input_and_writes_nothing(tmp_path, args, message):
  run_dir = tmp_path / 'run'
  result = run_script('collect_rollouts', f'--run_dir={run_dir}', *args, check=False)
  assert result.returncode != 0, result
  assert message in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(run_dir)


def test_a_refused_stage_keeps_the_run_config(debug_data, tmp_path):
  from conftest import copy_run
  run_dir = copy_run(debug_data, str(tmp_path / 'run'))
  before = open(os.path.join(run_dir, 'config.json')).read()
  result = run_script('shard_rollouts', f'--run_dir={run_dir}', '--config.collect.num_rollouts=99',
                      f'--input_dir={tmp_path / "nothing"}', check=False)
  assert result.returncode == 2 and 'no rollouts in' in result.stderr, result.stderr[-1500:]
  assert open(os.path.join(run_dir, 'config.json')).read() == before


def test_an_unknown_preset_or_env_name_is_a_config_error():
  with pytest.raises(ConfigError, match=re.escape("no preset 'debgu'; its presets: debug, small")):
    config_lib.load('configs/carracing.py:debgu')
  c = debug_config()
  config_lib.override(c, 'env.name', 'NoSuchEnv-v0')
  with pytest.raises(ConfigError, match=re.escape("env.name='NoSuchEnv-v0'")):
    config_lib.validate(c)


def test_a_broken_config_json_names_the_file_and_the_fix(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text('{"seed": ')
  with pytest.raises(ConfigError, match=re.escape(f'{path} is not valid JSON')):
    config_lib.load_json(str(path), fix='mend it')
  with pytest.raises(ConfigError, match=re.escape(f'cannot read {tmp_path}')):
    config_lib.load_json(str(tmp_path), fix='mend it')
