"""Plumbing that research code never touches: flags, run dirs, atomic files, snapshots,
worker pools, MPI, SLURM and the pipeline runners."""
