"""wm/models/registry.py is the only list of models: config validation and the stages' constructor
arguments come from it, and those arguments (stored with every export) are the ones they were."""

import re

import pytest

from conftest import debug_config
from wm import config as config_lib
from wm.errors import ConfigError
from wm.models import registry
from wm.stages import seq as seq_stage
from wm.stages import vae as vae_stage

# What exports and checkpoints of each model record as its constructor arguments.
EXPORTED_KWARGS = {
    'mdnrnn': {'z_size': 8, 'action_size': 3, 'hidden_size': 16, 'num_mixtures': 2},
    'transformer': {'z_size': 8, 'action_size': 3, 'hidden_size': 16, 'num_mixtures': 2,
                    'num_layers': 1, 'num_heads': 2, 'max_context': 10},
}


@pytest.mark.parametrize('name', sorted(registry.SEQUENCE_MODELS))
def test_sequence_models_build_from_the_config_as_before(name):
  seq = config_lib.SeqConfig(model=name, hidden_size=16, num_mixtures=2, sequence_length=10,
                             num_layers=1, num_heads=2)
  kwargs = seq_stage.model_kwargs(seq, 8, 3)
  assert list(kwargs.items()) == list(EXPORTED_KWARGS[name].items()), kwargs
  assert registry.sequence_model_class(name)(**kwargs).get_config() == kwargs


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
def test_the_encoder_builds_from_the_config_as_before(precision):
  config = debug_config()
  config.vae.precision = precision
  kwargs = vae_stage.model_kwargs(config)
  assert kwargs == {'z_size': config.vae.z_size, 'frame_size': config.env.frame_size,
                    'kl_tolerance': config.vae.kl_tolerance,
                    'mixed_precision': precision == 'bfloat16'}
  assert registry.encoder_class(config.vae.model)(**kwargs).z_size == config.vae.z_size


def test_an_unregistered_model_is_refused_naming_the_registered_ones():
  config = debug_config()
  config_lib.override(config, 'seq.model', 'lstm')
  with pytest.raises(ConfigError, match=re.escape(
      "seq.model='lstm' is not a registered sequence model ['mdnrnn', 'transformer']")):
    config_lib.validate(config)


def test_a_model_registered_under_a_new_name_needs_nothing_else(monkeypatch):
  monkeypatch.setitem(registry.SEQUENCE_MODELS, 'small_lstm', 'wm.models.mdnrnn:MDNRNN')
  config = debug_config()
  config_lib.override(config, 'seq.model', 'small_lstm')
  config_lib.validate(config)
  assert seq_stage.model_kwargs(config.seq, 8, 3) == {
      'z_size': 8, 'action_size': 3, 'hidden_size': config.seq.hidden_size,
      'num_mixtures': config.seq.num_mixtures}
