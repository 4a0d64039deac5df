"""Hand-written compute kernels (CPU few-row products; the CUDA paged attention lives in attention/)."""
