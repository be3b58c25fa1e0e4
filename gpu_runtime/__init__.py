"""gpufleet gpu_runtime."""
