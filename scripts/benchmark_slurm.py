"""What SLURM costs on top of the stages: the debug data stages run locally vs through SLURM.

Input:  a running SLURM cluster (e.g. `sudo slurm/local_cluster.sh`); writes under --work_dir.
Output: printed figures: one trivial job's submit-to-completion time, a requeue round trip, the
        debug preset's collect+shard with `python -m wm` and with
        `slurm/submit_pipeline.sh --wait` (arrays of 3 and 2), and their ratio.

    python scripts/benchmark_slurm.py --work_dir=/tmp/wm-bench-slurm
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log

from absl import app, flags

from wm.infra import slurm
from wm.config import REPO_ROOT

_WORK_DIR = flags.DEFINE_string('work_dir', None, 'Scratch folder (default: a temporary one).')
_CONFIG = 'configs/carracing.py:debug'


def timed(argv: list[str], **kwargs) -> float:
  start = time.perf_counter()
  subprocess.run(argv, check=True, cwd=REPO_ROOT, capture_output=True, **kwargs)
  return time.perf_counter() - start


def trivial_job(work: str) -> float:
  return timed(['sbatch', '--wait', '--cpus-per-task=1', f'--output={work}/trivial-%j.log',
                '--wrap=true'])


def requeue_round_trip(work: str) -> float:
  """From `scontrol requeue` to the job running again."""
  marker = os.path.join(work, 'requeue-runs')
  script = f'echo run >> {marker}; sleep 60'
  job = subprocess.run(['sbatch', '--parsable', '--requeue', '--cpus-per-task=1',
                        f'--output={work}/requeue-%j.log', f'--wrap={script}'],
                       check=True, capture_output=True, text=True).stdout.strip()
  while not os.path.exists(marker):
    time.sleep(0.1)
  start = time.perf_counter()
  subprocess.run(['scontrol', 'requeue', job], check=True)
  while open(marker).read().count('run') < 2:
    time.sleep(0.1)
  took = time.perf_counter() - start
  subprocess.run(['scancel', job], check=True)
  return took


def stages_locally(work: str) -> float:
  return timed([sys.executable, '-m', 'wm', f'--run_dir={work}/local',
                f'--config={_CONFIG}', '--parallelism=2', '--stages=collect,shard'])


def stages_on_slurm(work: str) -> float:
  env = dict(os.environ, WM_PYTHON=sys.executable)
  return timed(['bash', 'slurm/submit_pipeline.sh', f'--run_dir={work}/slurm',
                f'--config={_CONFIG}', '--stages=collect,shard', '--collect_tasks=3',
                '--shard_tasks=2', '--sbatch_args=--cpus-per-task=1 --mem=2G', '--wait'], env=env)


def main(argv: list[str]) -> None:
  del argv
  if slurm.partition_info(None) is None:
    sys.exit('error: no SLURM cluster answers sinfo; start one with sudo slurm/local_cluster.sh')
  work = _WORK_DIR.value or tempfile.mkdtemp(prefix='wm-bench-slurm-')
  shutil.rmtree(work, ignore_errors=True)
  os.makedirs(work)
  trivial_job(work)  # the first job after slurmctld starts is slower
  rows = [('slurm/trivial_job_s', trivial_job(work)),
          ('slurm/requeue_round_trip_s', requeue_round_trip(work)),
          ('pipeline/local_collect_shard_s', stages_locally(work)),
          ('pipeline/slurm_collect_shard_s', stages_on_slurm(work))]
  for name, value in rows:
    print(f'{name:34s} {value:8.1f}')
  print(f'{"pipeline/slurm_over_local":34s} {rows[3][1] / rows[2][1]:8.2f}x')


if __name__ == '__main__':
  app.run(main)
