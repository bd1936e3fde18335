#!/usr/bin/env bash
# Stops the cluster started by slurm/local_cluster.sh: cancels every job, then stops slurmd,
# slurmctld (and munged if that script started it) by the pids in their pid files.
#
#   sudo slurm/stop_local_cluster.sh [--purge]   # --purge also deletes the state folder
#
# WM_SLURM_DIR names the state folder (default /var/tmp/wm-slurm), as for local_cluster.sh.
set -euo pipefail

STATE=${WM_SLURM_DIR:-/var/tmp/wm-slurm}
PURGE=0
for arg in "$@"; do
  case $arg in
    --purge) PURGE=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
  esac
done

# stop_pid_file PIDFILE NAME: stops the process only if it still is that daemon (pids are reused).
stop_pid_file() {
  local file=$1 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]; then
    kill "$pid"
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$file"
}

if [[ -f $STATE/slurmctld.pid ]] && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u || true)
  if [[ -n $jobs ]]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.25; done
  fi
fi
stop_pid_file "$STATE/slurmd.pid" slurmd
stop_pid_file "$STATE/slurmctld.pid" slurmctld
if [[ -f $STATE/started-munged ]]; then
  stop_pid_file /run/munge/munged.pid munged
  rm -f "$STATE/started-munged"
fi
if ((PURGE)); then
  rm -rf "$STATE"
  conf=/etc/slurm/slurm.conf
  if grep -qs '# written by slurm/local_cluster.sh' $conf; then rm -f $conf; fi
fi
echo "stop_local_cluster: stopped (state in $STATE$( ((PURGE)) && echo ', deleted'))"
