#!/usr/bin/env bash
# Installs the Debian packages some tests need beyond requirements.txt: an MPI library (the
# controller's MPI test, mark `mpi`) and Xvfb (play --render on a headless machine). The SLURM
# daemons are installed by slurm/local_cluster.sh. Safe to rerun. Without root or apt-get it only
# says what is missing: those tests then skip with the reason and everything else runs.
set -euo pipefail
missing=()
command -v mpiexec >/dev/null || missing+=(openmpi-bin libopenmpi-dev)
command -v Xvfb >/dev/null || missing+=(xvfb)
((${#missing[@]})) || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null
else
  echo "note: ${missing[*]} missing; 'sudo apt-get install ${missing[*]}' enables the tests that" \
       "need them (they skip otherwise)" >&2
fi
