"""gpufleet actors."""
