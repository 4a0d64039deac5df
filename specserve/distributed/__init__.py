"""Tensor parallelism over torch.distributed: process groups, parallel layers, sharded loading,
the rank-0 driver, the worker loop on ranks > 0, and the launcher that starts and watches workers."""
