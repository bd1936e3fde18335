#!/usr/bin/env bash
# Submits every stage of the pipeline as a chain of SLURM jobs (afterok dependencies; a failed
# stage cancels the rest), prints the job ids and appends them to RUN/slurm_jobs.json.
#
#   slurm/submit_pipeline.sh --run_dir=runs/paper --config=configs/carracing.py:paper \
#       --partition=cpu --gpu_partition=gpu --collect_tasks=64 [--config.vae.z_size=64]
#   slurm/submit_pipeline.sh --helpfull   # every option (wm/infra/submit.py)
#
# Python: $WM_PYTHON, else the active virtualenv, else the repository's .venv, else python3.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${WM_PYTHON:-}
if [[ -z $py && -n ${VIRTUAL_ENV:-} ]]; then py=$VIRTUAL_ENV/bin/python; fi
if [[ -z $py && -x $repo/.venv/bin/python ]]; then py=$repo/.venv/bin/python; fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
exec "${py:-python3}" -m wm.infra.submit "$@"
