#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost (slurmctld + slurmd from Debian's packages), for trying
# the sbatch scripts on a laptop and for the tests. Needs root (daemons, /etc/slurm/slurm.conf).
#
#   sudo slurm/local_cluster.sh          # install when missing, configure, start, wait until idle
#   sinfo; sbatch --wrap='hostname'      # then use it like any cluster
#   sudo slurm/stop_local_cluster.sh     # cancel jobs, stop the daemons (--purge: drop the state)
#
# Settings (environment):
#   WM_SLURM_DIR   state folder: config, spool, logs, pid files (default /var/tmp/wm-slurm)
#   WM_SLURM_AUTH  munge (default) or none (auth/none: no munge daemon; fine on a laptop)
#   WM_SLURM_WAIT  seconds to wait for the node to become idle (default 60)
# The node's CPUs and memory come from `slurmd -C`. Partitions: `local` (default) and `gpu` (the
# same node, so scripts that ask for a GPU partition can be tried; it has no GPUs). Exit status:
# 0 running, 3 cannot run here (not root, no apt-get), 1 the daemons did not come up (logs shown).
set -euo pipefail

STATE=${WM_SLURM_DIR:-/var/tmp/wm-slurm}
AUTH=${WM_SLURM_AUTH:-munge}
WAIT=${WM_SLURM_WAIT:-60}
CONF=/etc/slurm/slurm.conf
MARK='# written by slurm/local_cluster.sh'

say() { echo "local_cluster: $*"; }
cannot() { echo "local_cluster: cannot start here: $*" >&2; exit 3; }

# alive PIDFILE NAME: /proc, not kill -0 (a user may ask about root's daemons), and the name, as
# a pid file left from before a reboot may name another process now.
alive() { [[ -f $1 && $(cat "/proc/$(cat "$1")/comm" 2>/dev/null) == "$2" ]]; }

install_packages() {
  local want=(slurmctld slurmd slurm-client)
  [[ $AUTH == munge ]] && want+=(munge)
  local missing=()
  for p in "${want[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == *'ok installed'* ]] || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  command -v apt-get >/dev/null || cannot "${missing[*]} missing and there is no apt-get"
  say "installing ${missing[*]}"
  local apt=(apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >"$STATE/apt.log" 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$STATE/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >>"$STATE/apt.log" 2>&1
  } || { tail -20 "$STATE/apt.log" >&2; cannot "apt-get install failed (log above)"; }
}

start_munge() {
  [[ $AUTH == munge ]] || return 0
  mkdir -p /run/munge && chown munge:munge /run/munge
  alive /run/munge/munged.pid munged && return
  [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || create-munge-key -f; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  runuser -u munge -- munged
  touch "$STATE/started-munged"  # stop_local_cluster.sh stops only a munged it started
}

# mpi_plugin: pmix when slurmd can load it, else none. srun -n N starts MPI ranks (mpi4py on
# Debian's Open MPI) through PMIx; but SLURM's mpi_pmix.so plugin ships without the PMIx library
# (libpmix2, which Open MPI's packages bring), and MpiDefault=pmix without that library makes every
# job step fail ("can not load PMIx library"). With none, srun works but Open MPI programs it starts
# cannot meet (MPI_Init aborts them; the stages' ranks leave the work to rank 0, wm/infra/mpi.py);
# restart the cluster after installing MPI to get pmix.
# (No `| grep -q` here: under pipefail, grep leaving early can kill ldconfig with SIGPIPE, and
# the pipeline's failure chose none about once in 70 starts.)
mpi_plugin() {
  if compgen -G '/usr/lib/*/slurm*/mpi_pmix.so' >/dev/null \
    && [[ $(ldconfig -p 2>/dev/null) == *libpmix.so* ]]; then
    echo pmix
  else
    echo none
  fi
}

write_conf() {
  local host node auth cred
  host=$(hostname -s)
  # `slurmd -C` prints this node's line (CPUs, sockets, cores, memory) and an UpTime line.
  node=$(slurmd -C | sed -nE '1s/^NodeName=[^ ]+ //p')
  auth=auth/munge cred=cred/munge
  [[ $AUTH == none ]] && auth=auth/none cred=cred/none
  mpi=$(mpi_plugin)
  mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/log"
  cat >"$STATE/slurm.conf" <<CONF
$MARK: a one-node cluster on localhost.
ClusterName=wmlocal
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=$auth
CredType=$cred
# A requeued job may start again after cred_expire seconds (default 120).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# pgid, not linuxproc: linuxproc leaked background children of a batch shell leaving via a trap.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=$mpi
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
# No slurmdbd here: finished jobs go to a text file and stay visible to scontrol for 10 minutes.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
MinJobAge=600
KillWait=10
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 $node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
CONF
  mkdir -p /etc/slurm
  if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    cannot "$CONF exists and was not written by this script; this machine has its own SLURM"
  fi
  cp "$STATE/slurm.conf" "$CONF"
}

wait_idle() {
  local host since state=''
  host=$(hostname -s)
  since=$1
  for ((i = 0; i < WAIT * 2; i++)); do
    # A restarted slurmctld reports the node from saved state until slurmd registers again.
    local boot
    boot=$(scontrol show node "$host" 2>/dev/null | sed -nE 's/.*SlurmdStartTime=([^ ]+).*/\1/p')
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null | sed -n 1p)
    if [[ -n $boot && $boot != None ]] && (($(date -d "$boot" +%s) >= since)); then
      case $state in
        idle | mix | alloc) say "node $host is $state (state in $STATE)"; return 0 ;;
        drain* | down*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
      esac
    fi
    sleep 0.5
  done
  echo "local_cluster: node $host did not become idle in ${WAIT}s (state '$state'); logs:" >&2
  tail -n 15 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  exit 1
}

main() {
  [[ $AUTH == munge || $AUTH == none ]] || cannot "WM_SLURM_AUTH=$AUTH; use munge or none"
  if alive "$STATE/slurmctld.pid" slurmctld && alive "$STATE/slurmd.pid" slurmd \
    && sinfo -h >/dev/null 2>&1; then
    say "already running (state in $STATE)"
    return 0
  fi
  [[ $(id -u) == 0 ]] || cannot "it needs root (run it with sudo); or use a real cluster"
  mkdir -p "$STATE"
  install_packages
  local since
  since=$(date +%s)
  write_conf
  start_munge
  alive "$STATE/slurmctld.pid" slurmctld || slurmctld
  alive "$STATE/slurmd.pid" slurmd || slurmd
  wait_idle "$since"
  [[ $(mpi_plugin) == pmix ]] \
    || say "no PMIx library: MpiDefault=none (srun works; MPI ranks need libpmix2, then a restart)"
}

main "$@"
