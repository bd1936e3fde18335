"""Benchmark M and its judges (seq.judges) trained one after the other against side by side.

Input:  a run dir whose encode stage is done (RUN/encoded and RUN/config.json), e.g. a
        `configs/doom.py:small` run.
Output: for each side, the wall time of the seq stage's script training M and --judges judges
        for --train_steps steps each from scratch (start-up, compilation, validation and export
        included), model-steps/s, and the ratio side by side / one after the other.

    python scripts/benchmark_judges.py --run_dir=runs/doom_small [--judges=1 --parallelism=2
                                       --train_steps=150 --rounds=1] [--config.a.b=v ...]

One after the other is `--parallelism=1` (each M on every core, as without side-by-side
training); side by side is `--parallelism=N` (M and N - 1 judges at once, each in its own
process on its share of the cores). Each side trains in a scratch run dir beside RUN (RUN/encoded
and RUN/config.json linked, removed afterwards); rounds alternate between the sides, so a machine
busy with other work slows both alike; the figures are medians over rounds.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from wm.errors import UserError
from wm.infra import cli

FLAGS = flags.FLAGS  # --run_dir (a run whose encode stage is done) and --config: wm.infra.cli
flags.DEFINE_integer('judges', 1, 'Judges trained with M (seq.judges).', lower_bound=1)
flags.DEFINE_integer('parallelism', 2, 'Trainings at once on the side-by-side side.',
                     lower_bound=2)
flags.DEFINE_integer('train_steps', 150, 'Training steps of each M.', lower_bound=1)
flags.DEFINE_integer('rounds', 1, 'Alternating rounds per side.', lower_bound=1)

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train_sequence_model.py')


def train_seconds(run_dir: str, parallelism: int) -> float:
  """Wall seconds of the seq stage training M and the judges from scratch in a scratch run dir."""
  scratch = tempfile.mkdtemp(prefix='.benchmark_judges-', dir=os.path.dirname(run_dir))
  try:
    for name in ('encoded', 'config.json'):
      os.symlink(os.path.join(run_dir, name), os.path.join(scratch, name))
    argv = [sys.executable, SCRIPT, f'--run_dir={scratch}', f'--parallelism={parallelism}',
            f'--config.seq.judges={FLAGS.judges}', f'--config.seq.train_steps={FLAGS.train_steps}',
            f'--config.seq.save_every={FLAGS.train_steps}']
    if FLAGS['config'].present:
      argv.append(f'--config={FLAGS.config}')
    argv += [f'--config.{k}={v}' for k, v in cli.overrides().items()]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
      raise UserError(f'the seq stage failed (exit status {result.returncode}):\n'
                      f'{result.stderr[-3000:]}')
    return seconds
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def main(argv):
  del argv
  run_dir = os.path.abspath(FLAGS.run_dir or '')
  if not FLAGS.run_dir or not os.path.isdir(os.path.join(run_dir, 'encoded', 'train')):
    raise UserError(f'--run_dir={FLAGS.run_dir} has no RUN/encoded/train: pass a run dir whose '
                    'encode stage is done')
  models = (1 + FLAGS.judges) * FLAGS.train_steps
  times = {1: [], FLAGS.parallelism: []}
  for round_ in range(FLAGS.rounds):
    for parallelism in times:
      times[parallelism].append(train_seconds(run_dir, parallelism))
      print(f'round {round_ + 1}, --parallelism={parallelism}: {times[parallelism][-1]:.1f} s',
            flush=True)
  print(f'M and {FLAGS.judges} judge(s), {FLAGS.train_steps} steps each, from scratch '
        f'({os.cpu_count()} cores):')
  for parallelism, seconds in times.items():
    how = 'one after the other' if parallelism == 1 else 'side by side'
    wall = statistics.median(seconds)
    print(f'  {how:20s} (--parallelism={parallelism}): {wall:7.1f} s, '
          f'{models / wall:.2f} model-steps/s')
  ratios = [a / b for a, b in zip(times[1], times[FLAGS.parallelism])]
  print(f'  side by side / one after the other: {statistics.median(ratios):.2f}x')


if __name__ == '__main__':
  app.run(cli.exits_on_user_error(main), flags_parser=cli.parse_flags)
