"""Find corrupted or truncated TFRecord shards.

Input:  --pattern, a glob of shards (e.g. 'RUN/records/*/raw.tfrecord-*').
Output: one line per bad shard, `path: reason`, on stdout; nothing for good shards.
Exit status: 0 when every shard is good, 1 when any is bad, 2 on bad usage.

Each record is read (GZIP stream and CRCs) and parsed by the schema its name implies; where the
split has a manifest.json the shard's size and sha256 are compared with it as well.

    python scripts/find_corrupted_tfrecords.py --pattern='RUN/records/*/raw.tfrecord-*'
    python scripts/find_corrupted_tfrecords.py --pattern='RUN/encoded/*/encoded.tfrecord-*'

To repair, delete the bad shards and rerun the stage that writes them: it writes missing shards
again (scripts/shard_rollouts.py --run_dir=RUN from RUN/rollouts for raw.*, and
scripts/encode_rollouts.py --run_dir=RUN for encoded.*).
"""

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import app, flags

_PATTERN = flags.DEFINE_string('pattern', None, 'Glob of the shards to check.')
flags.mark_flag_as_required('pattern')


def check(path: str, manifests: dict) -> str | None:
  from wm import datasets, records
  from wm.infra import fileio
  from wm.stages import shard
  folder, name = os.path.split(path)
  if folder not in manifests:
    manifest_path = os.path.join(folder, shard.MANIFEST)
    try:
      manifests[folder] = fileio.read_json(manifest_path) if os.path.exists(manifest_path) else {}
    except ValueError:
      manifests[folder] = {}
  listed = {s['file']: s for s in manifests[folder].get('shards', [])}
  if name in listed:
    mismatch = datasets.manifest_mismatch(path, listed[name])
    if mismatch:
      return mismatch
  parse = records.parse_encoded if name.startswith('encoded') else records.parse_raw
  return records.check_file(path, parse)


def main(argv):
  del argv
  paths = sorted(p for p in glob.glob(_PATTERN.value) if os.path.isfile(p))
  if not paths:
    print(f'error: no files match --pattern={_PATTERN.value}', file=sys.stderr)
    sys.exit(2)
  manifests, bad = {}, 0
  for path in paths:
    reason = check(path, manifests)
    if reason:
      bad += 1
      print(f'{path}: {reason}', flush=True)
  sys.exit(1 if bad else 0)


if __name__ == '__main__':
  app.run(main)
