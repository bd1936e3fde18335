"""Models by name: a config names a class, this module finds it (imported only when used).

A new encoder or sequence model is a new class plus one line here, not a new script: these
tables are the only lists of models (config validation checks names against them). Each class
builds its constructor arguments from the config with a classmethod `kwargs_from_config`:
`(config)` for an encoder, `(config.seq, z_size, action_size)` for a sequence model. The stages
call it and save its result with the export, which wm/models/export.py passes back to the class.
"""

from __future__ import annotations

import importlib

from wm.errors import ConfigError

ENCODERS = {
    'conv_vae': 'wm.models.vae:ConvVAE',
}
SEQUENCE_MODELS = {
    'mdnrnn': 'wm.models.mdnrnn:MDNRNN',
    'transformer': 'wm.models.transformer:Transformer',
}


def resolve(table: dict[str, str], name: str, field: str) -> type:
  if name not in table:
    raise ConfigError(f'unknown {field}={name!r}; registered: {sorted(table)} '
                      f'(wm/models/registry.py)')
  module, _, attr = table[name].partition(':')
  return getattr(importlib.import_module(module), attr)


def encoder_class(name: str) -> type:
  return resolve(ENCODERS, name, 'vae.model')


def sequence_model_class(name: str) -> type:
  return resolve(SEQUENCE_MODELS, name, 'seq.model')
