"""MPI when launched by `mpiexec -n N` or `srun -n N`, and nothing otherwise.

mpi4py is imported only when the launcher's environment says there are several ranks, so a
plain `python scripts/...` never initialises MPI. When there are several ranks but mpi4py or
an MPI library is missing, or srun started them without an MPI plugin (no PMI or PMIx to wire
them: Open MPI's MPI_Init then aborts every rank with exit status 1, MPICH's makes each a rank 0
of 1), `world()` reports it: rank 0 carries on alone (with its local process pool) and the other
ranks stop, instead of N copies failing or training over each other.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging

# (size, rank) variables of the launchers: Open MPI, MPICH/Hydra and PMIx, SLURM's srun.
_LAUNCHERS = (('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK'), ('PMI_SIZE', 'PMI_RANK'),
              ('PMIX_SIZE', 'PMIX_RANK'), ('SLURM_NTASKS', 'SLURM_PROCID'))
# What an MPI library needs to find its peers: set by mpiexec, and by srun's MPI plugins only.
_WIRING = ('OMPI_COMM_WORLD_SIZE', 'PMI_RANK', 'PMI_FD', 'PMIX_RANK', 'PMIX_NAMESPACE')


@dataclasses.dataclass
class World:
  comm: Any  # an mpi4py communicator, or None without MPI
  rank: int  # this process's rank (0 without MPI)
  size: int  # ranks that share the work (1 without MPI)
  launched: int  # ranks the launcher started (size differs when MPI is missing)

  @property
  def root(self) -> bool:
    return self.rank == 0


def launched_ranks() -> tuple[int, int]:
  """(size, rank) as the launcher's environment variables tell, (1, 0) when none is set."""
  for size_var, rank_var in _LAUNCHERS:
    if size_var.startswith('SLURM') and 'SLURM_STEP_ID' not in os.environ:
      continue  # an sbatch script itself (one process), not tasks started by srun
    if size_var in os.environ and rank_var in os.environ:
      try:
        return int(os.environ[size_var]), int(os.environ[rank_var])
      except ValueError:
        continue
  return 1, 0


def world() -> World:
  size, rank = launched_ranks()
  if size <= 1:
    return World(None, 0, 1, 1)
  if not any(name in os.environ for name in _WIRING):
    logging.warning('launched as rank %d of %d by srun without an MPI plugin (no PMI or PMIx '
                    'variables): rank 0 works alone with its local process pool, the other ranks '
                    'exit. Start the ranks with `srun --mpi=pmix` (`srun --mpi=list` shows the '
                    'plugins) or set MpiDefault in slurm.conf', rank, size)
    return World(None, rank, 1, size)
  try:
    from mpi4py import MPI  # pylint: disable=import-outside-toplevel
    comm = MPI.COMM_WORLD
  except (ImportError, RuntimeError) as e:
    logging.warning('launched as rank %d of %d but MPI is unavailable (%s): rank 0 works '
                    'alone with its local process pool, the other ranks exit', rank, size, e)
    return World(None, rank, 1, size)
  if comm.Get_size() != size:
    logging.warning('launcher says %d ranks, MPI says %d: using MPI\'s', size, comm.Get_size())
  return World(comm, comm.Get_rank(), comm.Get_size(), size)
