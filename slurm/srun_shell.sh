#!/usr/bin/env bash
# The shared part of slurm/srun_general.sh and slurm/srun_gpu.sh (WM_SRUN_KIND=general|gpu):
# turns the flags into `srun --pty` options and opens a login shell in the repository.
# WM_SRUN_DRY_RUN=1 prints the srun command instead of running it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
kind=${WM_SRUN_KIND:-general}
partition=${WM_PARTITION:-}
gpus=0 mem=${WM_SRUN_MEM:-8G}
if [[ $kind == gpu ]]; then
  partition=${WM_GPU_PARTITION:-$partition} gpus=${WM_SRUN_GPUS:-1} mem=${WM_SRUN_MEM:-16G}
fi
cpus=${WM_SRUN_CPUS:-4} time=${WM_SRUN_TIME:-1:00:00} account=${WM_ACCOUNT:-}

usage() {
  echo "usage: $(basename "$0") [-c CPUS] [-m MEM] [-t TIME] [-p PARTITION] [-A ACCOUNT]" \
    "$([[ $kind == gpu ]] && echo '[-g GPUS] ')[-- SRUN_OPTIONS]" >&2
  exit 2
}
while getopts 'c:m:t:p:A:g:h' opt; do
  case $opt in
    c) cpus=$OPTARG ;;
    m) mem=$OPTARG ;;
    t) time=$OPTARG ;;
    p) partition=$OPTARG ;;
    A) account=$OPTARG ;;
    g) [[ $kind == gpu ]] || usage; gpus=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $cpus =~ ^[0-9]+$ && $gpus =~ ^[0-9]+$ ]] || { echo "error: -c and -g take numbers" >&2; usage; }

py=${WM_PYTHON:-}
if [[ -z $py && -x $repo/.venv/bin/python ]]; then py=$repo/.venv/bin/python; fi
argv=(srun --pty --job-name="wm-$kind-shell" --ntasks=1 --cpus-per-task="$cpus" --mem="$mem"
      --time="$time")
[[ -n $partition ]] && argv+=(--partition="$partition")
[[ -n $account ]] && argv+=(--account="$account")
((gpus > 0)) && argv+=(--gres="gpu:$gpus")
# The shell starts in the repository with its Python first on PATH and the repository importable.
argv+=("$@" --chdir="$repo" env ${py:+PATH="$(dirname "$py"):$PATH"}
       PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "${SHELL:-/bin/bash}" -l)
if [[ -n ${WM_SRUN_DRY_RUN:-} ]]; then
  printf '%q ' "${argv[@]}"
  echo
  exit 0
fi
echo "srun: ${cpus} CPUs, ${mem}, ${time}$( ((gpus > 0)) && echo ", $gpus GPU(s)")" \
  "${partition:+on $partition}" >&2
exec "${argv[@]}"
