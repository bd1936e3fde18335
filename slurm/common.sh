# shellcheck shell=bash
# Shared by every slurm/*.sbatch script (sourced, not run): finds the repository and its Python,
# sends the job's output to RUN/logs/<stage>-<job>[_<task>].log, runs the stage processes,
# forwards SIGUSR1/SIGTERM to them, and requeues the job when a stage asks for it.
#
# A stage asks to be requeued by exiting with status 75 (wm/training.py EXIT_REQUEUE) after
# saving, or by dying from the signal that was forwarded to it (stages that resume by rerun and
# keep no state in memory: collection, sharding, encoding). The job then runs
# `scontrol requeue` on itself; the rerun resumes. Settings (environment):
#   WM_REPO        repository root (set by slurm/submit_pipeline.sh; default: the submit dir)
#   WM_PYTHON      Python to run the stages with (default: $VIRTUAL_ENV, then WM_REPO/.venv)
#   WM_MAX_REQUEUES  requeue at most this many times (default 20), then fail
#   WM_DONE_FILE   exit at once when this file exists (the submitter's check after an array)

WM_EXIT_REQUEUE=75
WM_PIDS=()
WM_SIGNAL=''
WM_TRAPPED=0

wm_die() { echo "error: $*" >&2; exit 2; }

# wm_init STAGE ARGS...: checks the arguments, picks Python, opens the log. ARGS are the stage
# script's flags as given to sbatch; --run_dir is required.
wm_init() {
  WM_STAGE=$1
  shift
  WM_RUN_DIR=''
  local arg
  for arg in "$@"; do
    case $arg in --run_dir=*) WM_RUN_DIR=${arg#--run_dir=} ;; esac
  done
  [[ -n $WM_RUN_DIR ]] || wm_die "usage: sbatch slurm/$WM_STAGE.sbatch --run_dir=RUN [stage flags]"
  [[ -f $WM_REPO/wm/infra/pipeline.py ]] || wm_die "WM_REPO=$WM_REPO is not the repository root"
  if [[ -z ${WM_PYTHON:-} ]]; then
    if [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then
      WM_PYTHON=$VIRTUAL_ENV/bin/python
    elif [[ -x $WM_REPO/.venv/bin/python ]]; then WM_PYTHON=$WM_REPO/.venv/bin/python
    else WM_PYTHON=$(command -v python3) || wm_die 'no python3; set WM_PYTHON'; fi
  fi
  # srun ranks and stage subprocesses find the same Python first on PATH.
  PATH=$(dirname "$WM_PYTHON"):$PATH
  export WM_PYTHON PATH WM_REPO
  export PYTHONPATH=$WM_REPO${PYTHONPATH:+:$PYTHONPATH}
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
  wm_open_log
  # The check after an array has nothing to do when the array's last task marked the stage done.
  if [[ -n ${WM_DONE_FILE:-} && -e ${WM_DONE_FILE:-} ]]; then
    echo "== $WM_STAGE done already ($WM_DONE_FILE)"
    echo "== $(date '+%T') $WM_STAGE finished"
    exit 0
  fi
  trap 'wm_forward USR1' USR1
  trap 'wm_forward TERM' TERM
}

# The job's id as scontrol knows it: 123_4 for an array task, else 123.
wm_job_id() {
  if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  else echo "${SLURM_JOB_ID:-local$$}"; fi
}

wm_open_log() {
  mkdir -p "$WM_RUN_DIR/logs"
  local log
  log=$(cd "$WM_RUN_DIR/logs" && pwd)/$WM_STAGE-$(wm_job_id).log
  # slurm/submit_pipeline.sh already points sbatch --output there; otherwise switch to it.
  if [[ $(readlink -f /proc/$$/fd/1) != "$log" ]]; then
    echo "log: $log"
    exec >>"$log" 2>&1
  fi
  export WM_LOG=$log  # for the stage processes
  echo "== $(date '+%F %T') $WM_STAGE job $(wm_job_id) on $(hostname -s)," \
    "run ${SLURM_RESTART_COUNT:-0}, cpus ${SLURM_CPUS_PER_TASK:-?}, tasks ${SLURM_NTASKS:-1}," \
    "gpus '${CUDA_VISIBLE_DEVICES:-}'"
}

wm_forward() {
  WM_SIGNAL=$1
  WM_TRAPPED=1
  echo "== $(date '+%T') SIG$1 received: passing it to the stage (pids ${WM_PIDS[*]:-none})"
  local pid
  for pid in "${WM_PIDS[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}

# wm_spawn CMD...: starts a stage process in the background.
wm_spawn() {
  echo "== $(date '+%T') $*"
  "$@" &
  WM_PIDS+=($!)
}

# wm_spawn_workers CMD...: starts a training stage (V, M): CMD itself in a job of one task, or
# one srun step running CMD in each task of a job of several (--nodes=N, one task per node): the
# stage's workers, which find each other from srun's environment (wm/distribute.py). srun passes
# the USR1/TERM this script forwards to every worker; they agree on the step to stop after. No
# --kill-on-bad-exit: a worker that stops while the chief saves must not kill the save, and the
# others notice a dead worker themselves within seconds.
wm_spawn_workers() {
  if ((${SLURM_NTASKS:-1} > 1)); then
    wm_spawn srun --ntasks="$SLURM_NTASKS" --cpus-per-task="$(wm_cpus)" "$@"
  else
    wm_spawn "$@"
  fi
}

# wm_collect: waits for the spawned processes; notes failures and requeue requests. Returns 1
# when the job should stop starting new processes (a failure, a requeue, a signal).
WM_STATUS=0
WM_REQUEUE=0
wm_collect() {
  local pid code signum=0
  for pid in "${WM_PIDS[@]}"; do
    while true; do
      WM_TRAPPED=0
      code=0
      wait "$pid" || code=$?
      # A trapped signal interrupts `wait` while the process may still be running.
      ((WM_TRAPPED)) || break
    done
    [[ -n $WM_SIGNAL ]] && signum=$(kill -l "$WM_SIGNAL")
    if ((code == WM_EXIT_REQUEUE)) || { ((signum > 0)) && ((code == 128 + signum)); }; then
      WM_REQUEUE=1
    elif ((code != 0 && WM_STATUS == 0)); then
      WM_STATUS=$code
    fi
  done
  WM_PIDS=()
  ((WM_STATUS == 0 && WM_REQUEUE == 0)) && [[ -z $WM_SIGNAL ]]
}

# wm_finish: exits the job: 0 when all succeeded, after a requeue when one asked for it, else
# with the first failure's status.
wm_finish() {
  if ((WM_STATUS != 0)); then
    echo "== $(date '+%T') $WM_STAGE failed with exit status $WM_STATUS"
    exit "$WM_STATUS"
  fi
  ((WM_REQUEUE)) && wm_requeue
  echo "== $(date '+%T') $WM_STAGE finished"
  exit 0
}

# wm_wait: waits for every spawned process, then exits the job (wm_finish).
wm_wait() {
  wm_collect || true
  wm_finish
}

wm_requeue() {
  local id max=${WM_MAX_REQUEUES:-20}
  id=$(wm_job_id)
  if [[ -z ${SLURM_JOB_ID:-} ]]; then
    echo "== $WM_STAGE stopped early to be rerun (not under SLURM: rerun the same command)"
    exit $WM_EXIT_REQUEUE
  fi
  if ((${SLURM_RESTART_COUNT:-0} >= max)); then
    echo "== $WM_STAGE asked for a requeue again after $max requeues: giving up (WM_MAX_REQUEUES)"
    exit $WM_EXIT_REQUEUE
  fi
  echo "== $(date '+%T') $WM_STAGE stopped early to be rerun: scontrol requeue $id"
  if scontrol requeue "$id"; then
    # The controller now ends this run and queues the job again; its dependants keep waiting.
    exit 0
  fi
  echo "== scontrol requeue $id failed (cancelled, or requeue not allowed here)"
  exit $WM_EXIT_REQUEUE
}

# wm_array_flags TASK_FLAG COUNT_FLAG: this array task's share as the stage's flags, e.g.
# --task_index=3 --num_tasks=8; nothing outside an array job (the job then does the whole stage).
# WM_NUM_TASKS overrides the count (default: the array's highest index + 1).
wm_array_flags() {
  [[ -n ${SLURM_ARRAY_TASK_ID:-} ]] || return 0
  local count=${WM_NUM_TASKS:-$((SLURM_ARRAY_TASK_MAX + 1))}
  echo "--$2=$count --$1=$SLURM_ARRAY_TASK_ID"
}

wm_cpus() { echo "${SLURM_CPUS_PER_TASK:-1}"; }
