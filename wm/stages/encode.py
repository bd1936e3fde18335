"""Stage 4: re-encode raw rollouts into latent rollouts, split across processes, jobs and GPUs.

The partition (the seed project's): a split's input shards are cut into `num_outer` roughly
equal consecutive groups (np.array_split: they need not divide evenly); process `outer_index`
encodes group `outer_index` into `num_sub` output files holding consecutive runs of its rollouts.
Output k = outer_index * num_sub + j of outer x sub is `encoded.tfrecord-0000k-of-000NN`, so any
number of processes (one per outer index, any mix of SLURM jobs and GPUs) write one folder with
no collision. Each output is written atomically, then `.meta/<output>.json` records it complete
(its rollouts, frames, bytes, sha256 and the encoder's fingerprint); a rerun skips complete
outputs, redoes partial ones and redoes everything written by another encoder. The process that
completes a split's last output writes its manifest.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from wm import datasets, records
from wm.errors import ConfigError, DataError, UserError
from wm.infra import cli, fileio, runs
from wm.infra.progress import Progress
from wm.models import export
from wm.stages import shard

PREFIX = 'encoded'
FORMAT = datasets.ENCODED_FORMAT
# What a reused rollout is checked by and counted with, read without decoding its arrays.
INDEX_SPEC = {k: tf.io.FixedLenFeature([], tf.int64) for k in ('index', 'steps')}


@dataclasses.dataclass
class Output:
  name: str  # encoded.tfrecord-00007-of-00012
  rollouts: list[int]  # rollout indices, in order
  reads: list[tuple[str, int, int]]  # (input shard file, first record, record count)


def plan(raw_manifest: dict, num_outer: int, num_sub: int) -> list[Output]:
  """Every output of a split (outer x sub), in order: a pure function of the raw manifest."""
  shards = raw_manifest['shards']
  outputs = []
  for group in np.array_split(np.arange(len(shards)), num_outer):
    positions = [(int(s), r) for s in group for r in range(len(shards[s]['rollouts']))]
    for part in np.array_split(np.arange(len(positions)), num_sub):
      picked = [positions[p] for p in part]
      reads = {}
      for s, r in picked:
        first, count = reads.get(s, (r, 0))
        reads[s] = (first, count + 1)
      name = shard.rollouts_shard_name(len(outputs), num_outer * num_sub, PREFIX)
      outputs.append(Output(name, [shards[s]['rollouts'][r] for s, r in picked],
                            [(shards[s]['file'], f, c) for s, (f, c) in reads.items()]))
  return outputs


def fingerprint(encoder_dir: str) -> str:
  """Identifies an exported encoder by its description and weights."""
  digest = hashlib.sha256()
  for name in ('model.json', 'model.weights.h5'):
    with open(os.path.join(encoder_dir, name), 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()[:16]


def pin_device(gpu_index: int) -> str:
  """Makes only GPU `gpu_index` visible (call before TensorFlow touches a device)."""
  gpus = tf.config.list_physical_devices('GPU')
  if not gpus:
    logging.info('no GPU visible: encoding on the CPU (--gpu_index=%d ignored)', gpu_index)
    return 'CPU'
  if not 0 <= gpu_index < len(gpus):
    raise UserError(f'--gpu_index={gpu_index} but {len(gpus)} GPUs are visible '
                    f'({[g.name for g in gpus]}); pass 0..{len(gpus) - 1}')
  tf.config.set_visible_devices(gpus[gpu_index], 'GPU')
  return gpus[gpu_index].name


@contextlib.contextmanager
def shards_named_on_corruption(split_dir: str) -> Iterator[None]:
  """Turns a DataLossError from reading RUN/records/<split> into a DataError naming the bad
  shard (by the manifest's checksums) and the repair; outputs already written are kept."""
  try:
    yield
  except tf.errors.DataLossError as e:
    raise datasets.read_error(e, [split_dir], os.path.dirname(os.path.dirname(split_dir)),
                              'rerun this command: the outputs already written are kept') from None


def probe(split_dir: str, paths: list[str]) -> dict:
  """Frame shape and action size of a split's data, from its first rollout."""
  with shards_named_on_corruption(split_dir):
    for serialized in records.read(paths[:1]).take(1):
      x = records.parse_raw(serialized)
      return {'frame_shape': tuple(int(d) for d in x['frames'].shape[1:]),
              'action_size': int(x['actions'].shape[1])}
  raise DataError(f'{paths[0]} holds no rollouts; rerun scripts/shard_rollouts.py for {split_dir}')


def check_encoder(encoder, encoder_dir: str, data: dict, split_dir: str, z_size: int) -> None:
  """Refuses an encoder that does not fit the data or the config, before anything is written."""
  if tuple(encoder.frame_shape) != data['frame_shape']:
    raise DataError(f'the encoder in {encoder_dir} takes frames {tuple(encoder.frame_shape)} but '
                    f'the rollouts in {split_dir} have frames {data["frame_shape"]}; pass the '
                    'encoder trained on this data with --encoder_dir')
  if encoder.z_size != z_size:
    raise ConfigError(f'the encoder in {encoder_dir} has latent size {encoder.z_size} but the '
                      f'config says vae.z_size={z_size}; pass --config.vae.z_size='
                      f'{encoder.z_size} or the matching --encoder_dir')


class Encoder:
  """A loaded encoder and its batched encode function (one trace for every batch size)."""

  def __init__(self, encoder_dir: str, batch_size: int):
    self.dir = encoder_dir
    self.model = export.load(encoder_dir, kind='encoder')
    self.fingerprint = fingerprint(encoder_dir)
    self.batch_size = batch_size
    shape = [None, *self.model.frame_shape]
    self._encode = tf.function(self._full, input_signature=[tf.TensorSpec(shape, tf.uint8)])

  def _full(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
    return self.model.compute_full_representation(frames)

  def __call__(self, frames: tf.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """uint8 frames [N, H, W, 3] -> {'mu', 'logvar'} float32 [N, Z], in batches."""
    parts = [self._encode(frames[i:i + self.batch_size])
             for i in range(0, len(frames), self.batch_size)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in ('mu', 'logvar')}


def reusable(donor_root: str, split: str, raw_manifest: dict, encoder_fingerprint: str
             ) -> dict[int, str]:
  """{rollout index: the encoded file of `donor_root` holding it} for the rollouts of this split
  whose raw shard the donor holds byte for byte and encoded with the same encoder; {} when it
  has no finished encoding of the split, or one by another encoder."""
  donor = runs.Run(donor_root)
  try:
    encoded = fileio.read_json(os.path.join(donor.split_dir('encode', split), shard.MANIFEST))
    raw = fileio.read_json(os.path.join(donor.split_dir('shard', split), shard.MANIFEST))
  except (OSError, ValueError):
    return {}
  if encoded.get('encoder') != encoder_fingerprint:
    return {}
  same = {s.get('sha256') for s in raw['shards']} - {None}
  shared = {i for s in raw_manifest['shards'] if s.get('sha256') in same for i in s['rollouts']}
  folder = donor.split_dir('encode', split)
  return {i: os.path.join(folder, s['file']) for s in encoded['shards'] for i in s['rollouts']
          if i in shared}


def reused_examples(wanted: dict[int, str]) -> Iterator[tuple[bytes, int]]:
  """(serialized encoded rollout, its frames) of the rollouts `wanted` ({index: file})."""
  left = set(wanted)
  for path in dict.fromkeys(wanted.values()):
    try:
      for serialized in records.read([path]):
        x = tf.io.parse_single_example(serialized, INDEX_SPEC)
        if int(x['index']) in left:
          left.remove(int(x['index']))
          yield serialized.numpy(), int(x['steps']) + 1
    except tf.errors.OpError as e:
      raise DataError(f'{path}, whose encoded rollouts records.reuse_from lends here, cannot be '
                      f'read ({records.clean_message(e.message or str(e))}); rerun with '
                      '--config.records.reuse_from= to encode every rollout anew') from None
  if left:
    raise DataError(f'rollouts {sorted(left)} are missing from the encoded files of '
                    'records.reuse_from that list them; rerun with --config.records.reuse_from= '
                    'to encode every rollout anew')


def without(output: Output, reused: set[int]) -> Output:
  """`output` with the reads that hold only `reused` rollouts left out (the reads give the
  output's rollouts in order, `count` each)."""
  reads, position = [], 0
  for read in output.reads:
    members = output.rollouts[position:position + read[2]]
    position += read[2]
    if not reused.issuperset(members):
      reads.append(read)
  return Output(output.name, [i for i in output.rollouts if i not in reused], reads)


def rollouts_of(in_dir: str, output: Output) -> tf.data.Dataset:
  """The raw rollouts of one output, read (several shards at once) and decoded ahead in
  parallel, in a deterministic order: round robin over its input shards."""
  if not output.reads:
    return tf.data.Dataset.from_tensor_slices(tf.zeros([0], tf.string)).map(records.parse_raw)
  files, firsts, counts = zip(*output.reads)
  plan_data = tf.data.Dataset.from_tensor_slices(
      ([os.path.join(in_dir, f) for f in files], tf.constant(firsts, tf.int64),
       tf.constant(counts, tf.int64)))
  data = plan_data.interleave(lambda f, a, n: records.read_one(f).skip(a).take(n),
                              cycle_length=len(files), num_parallel_calls=datasets.AUTOTUNE)
  return data.map(records.parse_raw, num_parallel_calls=datasets.AUTOTUNE).prefetch(2)


def write_output(encoder: Encoder, in_dir: str, out_dir: str, output: Output,
                 data: dict, progress: Progress, counts: dict,
                 lent: dict[int, str] | None = None, compress_level: int = 1) -> dict:
  """Writes one output (zlib level `compress_level`): its rollouts encoded, or copied from
  `lent` ({index: encoded file} of records.reuse_from, see reusable)."""
  path = os.path.join(out_dir, output.name)
  lent = {i: lent[i] for i in output.rollouts if i in (lent or {})}
  fresh = without(output, set(lent))
  frames = 0

  def examples():
    nonlocal frames
    for serialized, length in reused_examples(lent):
      frames += length
      counts['rollouts'] += 1
      progress.update(counts['rollouts'], frames=counts['frames'])
      yield serialized
    missing = set(fresh.rollouts)
    for x in rollouts_of(in_dir, fresh):
      index = int(x['index'])
      if index in lent:
        continue  # a read shared with reused rollouts
      if index not in missing:
        raise DataError(f'{in_dir}: found rollout {index} where {output.name} expects '
                        f'{sorted(missing)}; the shards do not match their manifest.json (rerun '
                        'scripts/shard_rollouts.py)')
      missing.remove(index)
      rollout = {k: x[k].numpy() for k in ('actions', 'rewards', 'terminated', 'truncated')}
      rollout.update(encoder(x['frames']), seed=int(x['seed']))
      frames += len(rollout['mu'])
      counts['frames'] += len(rollout['mu'])
      counts['rollouts'] += 1
      progress.update(counts['rollouts'], frames=counts['frames'])
      yield records.encoded_example(rollout, index)
    if missing:
      raise DataError(f'{in_dir}: rollouts {sorted(missing)} are missing from the shards their '
                      'manifest.json lists them in (rerun scripts/shard_rollouts.py)')

  with shards_named_on_corruption(in_dir), fileio.atomic_path(path) as tmp:
    records.write(tmp, examples(), compress_level)
  info = {'file': output.name, 'rollouts': output.rollouts, 'num_rollouts': len(output.rollouts),
          'reused': len(lent), 'frames': frames, 'bytes': os.path.getsize(path),
          'sha256': shard.sha256(path), 'encoder': encoder.fingerprint,
          'z_size': encoder.model.z_size, 'action_size': data['action_size']}
  shard.write_meta(out_dir, output.name, info)
  return info


def encode_split(encoder: Encoder, in_dir: str, out_dir: str, outputs: list[Output],
                 mine: list[Output], data: dict, lent: dict[int, str] | None = None,
                 compress_level: int = 1) -> dict | None:
  """Writes this process's missing outputs of a split (copying the rollouts `lent`: see
  reusable; zlib level `compress_level`); the manifest once the split is complete."""
  expected = {'encoder': encoder.fingerprint}
  todo = [o for o in mine if not shard.shard_complete(out_dir, o.name, o.rollouts, **expected)]
  os.makedirs(os.path.join(out_dir, shard.META), exist_ok=True)
  fileio.remove_stale_tmp_files(out_dir)
  if todo and os.path.exists(os.path.join(out_dir, shard.MANIFEST)):
    os.remove(os.path.join(out_dir, shard.MANIFEST))  # it will list the new outputs
  progress = Progress(f'encode {os.path.basename(out_dir)}', sum(len(o.rollouts) for o in todo),
                      folder=os.path.dirname(out_dir))
  counts = {'rollouts': 0, 'frames': 0}
  for output in todo:
    with fileio.claim(os.path.join(out_dir, output.name)) as held:
      if not held:
        logging.info('%s is being written by another process: skipped', output.name)
        continue
      info = write_output(encoder, in_dir, out_dir, output, data, progress, counts, lent,
                          compress_level)
      logging.info('wrote %s: %d rollouts (%d of them reused), %d frames', output.name,
                   info['num_rollouts'], info['reused'], info['frames'])
  progress.update(counts['rollouts'], force=True, frames=counts['frames'])
  logging.info('%s: %d of this process\'s %d outputs were complete already',
               os.path.basename(out_dir), len(mine) - len(todo), len(mine))
  return shard.finish_split(out_dir, [o.rollouts for o in outputs], prefix=PREFIX,
                               fmt=FORMAT, expected=expected, z_size=encoder.model.z_size,
                               action_size=data['action_size'], encoder=encoder.fingerprint)


def present_splits(run: runs.Run) -> list[str]:
  """The splits the shard stage wrote (valid is absent when records.valid_fraction is 0)."""
  return [s for s in runs.SPLITS
          if os.path.exists(os.path.join(run.split_dir('shard', s), shard.MANIFEST))]


def run(stage: cli.Stage, split: str = 'all', num_outer_shards: int = 1,
        outer_shard_index: int = 0, num_sub_shards: int = 1, gpu_index: int = 0,
        encoder_dir: str | None = None) -> None:
  """The stage: this process's outputs of every split (one asked for by name must exist), then
  DONE once every split is complete with this encoder."""
  device = pin_device(gpu_index)
  encoder_dir = encoder_dir or os.path.join(stage.run.stage_dir('vae'), 'export')
  encoder = Encoder(encoder_dir, stage.config.encode.batch_size)
  splits = [split] if split != 'all' else present_splits(stage.run) or ['train']
  donor = stage.config.records.reuse_from
  if donor and not os.path.isdir(donor):
    raise ConfigError(f'records.reuse_from={donor!r} is not a folder: give the run dir whose '
                      'encoded rollouts to reuse, or leave it empty')
  plans = {}
  for name in splits:  # every check before anything is written
    in_dir = stage.run.split_dir('shard', name)
    raw_manifest = shard.read_manifest(in_dir)
    data = probe(in_dir, shard.shard_paths(in_dir))
    check_encoder(encoder.model, encoder_dir, data, in_dir, stage.config.vae.z_size)
    lent = reusable(donor, name, raw_manifest, encoder.fingerprint) if donor else {}
    if lent:
      logging.info('%s: %d rollouts reused from %s, encoded there by the same encoder', name,
                   len(lent), donor)
    plans[name] = (in_dir, plan(raw_manifest, num_outer_shards, num_sub_shards), data, lent)
  logging.info('encoding %s on %s with the encoder in %s (%s)', splits, device, encoder_dir,
               encoder.fingerprint)
  stage.run.clear_done('encode')
  first = outer_shard_index * num_sub_shards
  for name, (in_dir, outputs, data, lent) in plans.items():
    mine = outputs[first:first + num_sub_shards]
    manifest = encode_split(encoder, in_dir, stage.run.split_dir('encode', name), outputs, mine,
                            data, lent, stage.config.records.compress_level)
    if manifest is None:
      logging.info('%s: waiting for outputs of other processes', name)
    else:
      logging.info('%s: complete, %d outputs, %d rollouts, %d frames', name,
                   manifest['num_shards'], manifest['num_rollouts'], manifest['num_frames'])
  complete = {}
  for name in present_splits(stage.run):
    path = os.path.join(stage.run.split_dir('encode', name), shard.MANIFEST)
    info = shard.read_manifest(os.path.dirname(path)) if os.path.exists(path) else {}
    complete[name] = info.get('encoder') == encoder.fingerprint
  if all(complete.values()):
    stage.run.mark_done('encode', encoder=encoder.fingerprint, splits=sorted(complete))
