"""gpufleet projections."""
