"""Stage 4: re-encode the raw rollouts of each split into latent rollouts with the trained V.

Input:  RUN/records/{train,valid}/raw.tfrecord-* (stage 2) and the encoder RUN/vae/export
        (stage 3; another with --encoder_dir).
Output: RUN/encoded/{train,valid}/encoded.tfrecord-00007-of-00012: per rollout mu and logvar
        (T+1, z) plus actions, rewards, terminated, truncated (schema: wm/records.py);
        manifest.json per split once all its outputs exist; RUN/encoded/DONE once every split's.

    python scripts/encode_rollouts.py --run_dir=RUN [--split=train] \\
        [--num_outer_shards=4 --outer_shard_index=2 --num_sub_shards=3 --gpu_index=1]

--num_outer_shards splits a split's input shards into that many groups, --outer_shard_index picks
this process's group, --num_sub_shards is how many output files it writes: outer x sub outputs in
all. Run one process per outer index (any mix of SLURM jobs, array tasks and GPUs, all at once);
a rerun skips complete outputs and redoes partial ones.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging

from wm import cli, runs, sharding
from wm.errors import UserError

_SPLIT = flags.DEFINE_enum('split', 'all', ['train', 'valid', 'all'], 'Which split to encode.')
_NUM_OUTER = flags.DEFINE_integer('num_outer_shards', 1,
                                  'Groups the input shards are cut into (one per process).')
_OUTER_INDEX = flags.DEFINE_integer('outer_shard_index', 0, 'The group this process encodes.')
_NUM_SUB = flags.DEFINE_integer('num_sub_shards', 1, 'Output files this process writes.')
_GPU_INDEX = flags.DEFINE_integer('gpu_index', 0, 'The GPU this process uses (CPU if none).')
_ENCODER_DIR = flags.DEFINE_string('encoder_dir', None,
                                   'Exported encoder (default RUN/vae/export).')


def check_flags() -> None:
  if _NUM_OUTER.value < 1 or _NUM_SUB.value < 1:
    raise UserError(f'--num_outer_shards ({_NUM_OUTER.value}) and --num_sub_shards '
                    f'({_NUM_SUB.value}) must be >= 1')
  if not 0 <= _OUTER_INDEX.value < _NUM_OUTER.value:
    raise UserError(f'--outer_shard_index={_OUTER_INDEX.value} must be in [0, '
                    f'--num_outer_shards={_NUM_OUTER.value})')


def present_splits(stage: cli.Stage) -> list[str]:
  """The splits the shard stage wrote (valid is absent when records.valid_fraction is 0)."""
  return [s for s in runs.SPLITS
          if os.path.exists(os.path.join(stage.run.split_dir('shard', s), sharding.MANIFEST))]


def input_splits(stage: cli.Stage) -> list[str]:
  """The splits to encode (one asked for by name must exist: read_manifest says so)."""
  if _SPLIT.value != 'all':
    return [_SPLIT.value]
  return present_splits(stage) or ['train']


def main(stage: cli.Stage) -> None:
  check_flags()
  from wm import encoding  # TensorFlow loads after the flags and config are checked
  device = encoding.pin_device(_GPU_INDEX.value)
  encoder_dir = _ENCODER_DIR.value or os.path.join(stage.run.stage_dir('vae'), 'export')
  encoder = encoding.Encoder(encoder_dir, stage.config.encode.batch_size)
  splits = input_splits(stage)
  plans = {}
  for split in splits:  # every check before anything is written
    in_dir = stage.run.split_dir('shard', split)
    raw_manifest = sharding.read_manifest(in_dir)
    data = encoding.probe(in_dir, sharding.shard_paths(in_dir))
    encoding.check_encoder(encoder.model, encoder_dir, data, in_dir, stage.config.vae.z_size)
    plans[split] = (in_dir, encoding.plan(raw_manifest, _NUM_OUTER.value, _NUM_SUB.value), data)
  logging.info('encoding %s on %s with the encoder in %s (%s)', splits, device, encoder_dir,
               encoder.fingerprint)
  stage.run.clear_done('encode')
  first = _OUTER_INDEX.value * _NUM_SUB.value
  for split, (in_dir, outputs, data) in plans.items():
    mine = outputs[first:first + _NUM_SUB.value]
    manifest = encoding.encode_split(encoder, in_dir, stage.run.split_dir('encode', split),
                                     outputs, mine, data)
    if manifest is None:
      logging.info('%s: waiting for outputs of other processes', split)
    else:
      logging.info('%s: complete, %d outputs, %d rollouts, %d frames', split,
                   manifest['num_shards'], manifest['num_rollouts'], manifest['num_frames'])
  complete = {}
  for split in present_splits(stage):
    path = os.path.join(stage.run.split_dir('encode', split), sharding.MANIFEST)
    info = sharding.read_manifest(os.path.dirname(path)) if os.path.exists(path) else {}
    complete[split] = info.get('encoder') == encoder.fingerprint
  if all(complete.values()):
    stage.run.mark_done('encode', encoder=encoder.fingerprint, splits=sorted(complete))


if __name__ == '__main__':
  cli.run('encode', main)
