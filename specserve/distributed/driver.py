"""Rank 0's side: the model runner whose every model and KV-cache operation is first broadcast to the workers.

Rank 0 runs the scheduler, sampling and speculation. The speculator runs here only: after each
row-parallel all-reduce the hidden state is the same on every rank, so rank 0 already holds the full
hidden state an MLP speculator reads, and the logits it verifies against are gathered here. Running
it replicated would only repeat the work N times and add its inputs to every step's broadcast.

Any failure inside a step (a collective error, a dead worker, an exception on rank 0 between
collectives) leaves the ranks out of step, so it is fatal: the runner refuses further steps and
raises ``TensorParallelError`` (``fatal = True``), which the engine does not swallow.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from specserve.attention.metadata import AttentionMetadata
from specserve.core.outputs import RequestStepResult, SchedulerOutput
from specserve.distributed.parallel_state import TensorParallel, TensorParallelError, destroy_tensor_parallel
from specserve.distributed.protocol import Command, ControlChannel, pack_pairs, pack_step
from specserve.worker.model_runner import ModelRunner

if TYPE_CHECKING:
    from specserve.distributed.launcher import WorkerProcesses

logger = logging.getLogger(__name__)


class DriverModel:
    """Rank 0's shard as the runner sees it: each call tells the workers to make the same call first."""

    def __init__(self, model: nn.Module, tp: TensorParallel, channel: ControlChannel) -> None:
        self.model = model
        self.tp = tp
        self.channel = channel

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[Any],
                 md: AttentionMetadata) -> torch.Tensor:
        payload, meta = pack_step(input_ids, positions, md)
        self.channel.send(Command.STEP, payload, meta)
        return self.model(input_ids, positions, kv_caches, md)  # type: ignore[no-any-return]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [R, hidden] rows to sample -> float32 logits [R, vocab] (gathered from all ranks)."""
        self.channel.send(Command.LOGITS, meta=(hidden.shape[0],))
        hidden = hidden.contiguous()
        dist.broadcast(hidden, src=0, group=self.tp.device_group)
        return self.model.compute_logits(hidden)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:  # arch, get_input_embeddings, ...
        return getattr(self.model, name)


class TPModelRunner(ModelRunner):
    def __init__(self, model: nn.Module, tp: TensorParallel, workers: WorkerProcesses | None,
                 num_blocks: int, block_size: int, eos_token_ids: list[int], dtype: torch.dtype) -> None:
        local = model.local_arch
        self.channel = ControlChannel(tp)
        super().__init__(DriverModel(model, tp, self.channel), local.num_layers,  # type: ignore[arg-type]
                         local.num_kv_heads, local.head_dim, num_blocks, block_size, eos_token_ids, dtype,
                         tp.device)
        self.tp = tp
        self.workers = workers
        self.failure: TensorParallelError | None = None
        self._step_lock = threading.Lock()  # one step's collectives at a time
        self._state_lock = threading.Lock()  # failure and callbacks (the worker monitor thread sets them)
        self._callbacks: list[Callable[[TensorParallelError], None]] = []
        self._closed = False

    def enable_cuda_graphs(self, max_batch_size: int, max_model_len: int) -> bool:
        return False  # graphs would capture collectives; not supported under tensor parallelism

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if copies:
            self.channel.send(Command.COPY_BLOCKS, pack_pairs([c[0] for c in copies], [c[1] for c in copies]))
        super().copy_blocks(copies)

    def _move_slots(self, src: list[int], dst: list[int]) -> None:
        if src:
            self.channel.send(Command.MOVE_SLOTS, pack_pairs(src, dst))
        super()._move_slots(src, dst)

    def execute(self, out: SchedulerOutput) -> dict[str, RequestStepResult]:
        with self._step_lock:
            if self.failure is not None:
                raise self.failure
            try:
                return super().execute(out)
            except Exception as exc:
                raise self.fail(exc) from exc

    # ---- failure and shutdown ----------------------------------------------------------------
    def add_failure_callback(self, callback: Callable[[TensorParallelError], None]) -> None:
        """Called once, from any thread, when the group breaks (a worker died, a step failed)."""
        with self._state_lock:
            self._callbacks.append(callback)
            failure = self.failure
        if failure is not None:
            callback(failure)

    def fail(self, cause: BaseException) -> TensorParallelError:
        """Mark the group broken (the first cause wins) and notify; returns the error to raise."""
        if not isinstance(cause, TensorParallelError):
            # A collective error usually means a worker died: wait briefly for the monitor's diagnosis.
            dead = self.workers.wait_for_death(2.0) if self.workers is not None else None
            cause = TensorParallelError(dead or f"tensor-parallel step failed: {type(cause).__name__}: {cause}")
        with self._state_lock:
            first = self.failure is None
            if first:
                self.failure = cause
            failure, callbacks = self.failure, list(self._callbacks)
        assert failure is not None
        if first:
            logger.error("%s; the engine stops", failure)
            for callback in callbacks:
                callback(failure)
        return failure

    def shutdown(self, timeout: float = 10.0) -> None:
        """Tell the workers to leave, wait for them (killing stragglers) and leave the group; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.shutdown)
        if self.workers is not None:
            self.workers.stopping = True
        locked = self._step_lock.acquire(timeout=timeout)  # a step stuck in a collective keeps it
        try:
            if locked and self.failure is None:
                try:
                    self.channel.send(Command.SHUTDOWN)
                except Exception as exc:  # noqa: BLE001 - a worker already gone: nothing left to tell
                    logger.warning("tensor-parallel shutdown: %s", exc)
            if self.workers is not None:  # after a failure the rest wait on a dead group: end them now
                self.workers.join(timeout if self.failure is None else 0.0)
            if locked:
                destroy_tensor_parallel()
        finally:
            if locked:
                self._step_lock.release()
