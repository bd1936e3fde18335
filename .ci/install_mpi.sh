#!/usr/bin/env bash
# Installs an MPI library and mpi4py for the controller stage's MPI test (tests/test_es.py, mark
# `mpi`). Called by .ci/run before the tests; safe to rerun. Without root or apt-get it only says
# what is missing: the test then skips with that reason and everything else still runs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mpiexec >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openmpi-bin libopenmpi-dev >/dev/null
  else
    echo "install_mpi: no mpiexec; run 'sudo apt-get install openmpi-bin libopenmpi-dev'" >&2
    exit 0
  fi
fi
PY=${PY:-.venv/bin/python}
if [ -x "$PY" ] && ! "$PY" -c 'import mpi4py' 2>/dev/null; then
  "$PY" -m pip install -q "$(grep -E '^mpi4py==' requirements.txt)"
fi
