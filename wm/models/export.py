"""Saved models: a folder with the model's registry name, constructor arguments and weights.

    EXPORT/model.json          {"kind": "encoder"|"sequence_model", "name": "conv_vae",
                                "kwargs": {...}, "step": 20000, ...extra}
    EXPORT/model.weights.h5    the weights (Keras format)

`load(EXPORT)` rebuilds the model from its registry name and kwargs and loads the weights, so a
later stage needs only the folder (e.g. RUN/vae/export). Written atomically: a folder either has
both files of one export or none.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

from wm.infra import fileio
from wm.errors import DataError
from wm.models import registry

KINDS = {'encoder': registry.encoder_class, 'sequence_model': registry.sequence_model_class}


def save(model: tf.keras.Model, folder: str, kind: str, name: str, kwargs: dict[str, Any],
         **extra: Any) -> str:
  """Exports `model` (built, i.e. called once) to `folder`, replacing an older export whole."""
  assert kind in KINDS, (kind, sorted(KINDS))
  with fileio.atomic_dir(folder) as tmp:
    model.save_weights(os.path.join(tmp, 'model.weights.h5'))
    with open(os.path.join(tmp, 'model.json'), 'w') as f:
      json.dump({'kind': kind, 'name': name, 'kwargs': kwargs, **extra}, f, indent=2)
  return folder


def read_info(folder: str) -> dict[str, Any]:
  return fileio.read_json_checked(os.path.join(folder, 'model.json'),
                                  f'no exported model in {folder}',
                                  'run (or rerun) the stage that trains and exports it')


def build(folder: str, kind: str | None = None) -> tuple[tf.keras.Model, dict[str, Any]]:
  """The model exported in `folder`, built with fresh weights (checking its kind if given), and
  its model.json: what `load` fills, or a checkpoint of the same model."""
  info = read_info(folder)
  if kind is not None and info['kind'] != kind:
    raise DataError(f'{folder} holds a {info["kind"]}, expected a {kind}')
  model = KINDS[info['kind']](info['name'])(**info['kwargs'])
  model.build_for_loading()
  return model, info


def load(folder: str, kind: str | None = None) -> tf.keras.Model:
  """Rebuilds and returns the model exported in `folder` (checking its kind if given)."""
  model, info = build(folder, kind)
  try:
    model.load_weights(os.path.join(folder, 'model.weights.h5'))
  except (ValueError, OSError) as e:
    raise DataError(f'weights in {folder} do not fit {info["name"]}({info["kwargs"]}): {e}') from None
  return model
