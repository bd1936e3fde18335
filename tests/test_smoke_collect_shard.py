"""The debug preset's first two stages produce a complete, consistent data set."""

import os

from wm import rollouts
from wm.stages import shard


def test_debug_data_is_complete(debug_data):
  assert len(rollouts.list_indices(os.path.join(debug_data, 'rollouts'))) == 6
  train = shard.read_manifest(os.path.join(debug_data, 'records', 'train'))
  valid = shard.read_manifest(os.path.join(debug_data, 'records', 'valid'))
  assert train['num_rollouts'] + valid['num_rollouts'] == 6
  assert valid['num_rollouts'] >= 1
  assert os.path.exists(os.path.join(debug_data, 'records', 'DONE'))
