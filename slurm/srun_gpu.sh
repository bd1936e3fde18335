#!/usr/bin/env bash
# An interactive shell on a GPU node, with the repository's Python first on PATH.
#
#   slurm/srun_gpu.sh [-g GPUS] [-c CPUS] [-m MEM] [-t TIME] [-p PARTITION] [-A ACCOUNT] [-- OPTS]
#   slurm/srun_gpu.sh -g 2 -c 8 -t 4:00:00           # then: python scripts/train_vae.py ...
#
# Defaults from the environment: WM_GPU_PARTITION (else WM_PARTITION), WM_ACCOUNT,
# WM_SRUN_GPUS (1), WM_SRUN_CPUS (4), WM_SRUN_MEM (16G), WM_SRUN_TIME (1:00:00).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
WM_SRUN_KIND=gpu exec "$here/srun_shell.sh" "$@"
