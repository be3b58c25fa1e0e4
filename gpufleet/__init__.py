"""gpufleet gpufleet."""
