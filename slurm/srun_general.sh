#!/usr/bin/env bash
# An interactive shell on a CPU node, with the repository's Python first on PATH.
#
#   slurm/srun_general.sh [-c CPUS] [-m MEM] [-t TIME] [-p PARTITION] [-A ACCOUNT] [-- SRUN_OPTS]
#   slurm/srun_general.sh -c 8 -m 16G -t 2:00:00     # then: python scripts/collect_rollouts.py ...
#
# Defaults from the environment: WM_PARTITION, WM_ACCOUNT, WM_SRUN_CPUS (4), WM_SRUN_MEM (8G),
# WM_SRUN_TIME (1:00:00). Options after -- go to srun unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
WM_SRUN_KIND=general exec "$here/srun_shell.sh" "$@"
