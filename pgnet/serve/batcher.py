"""Dynamic batching: pictures of concurrent requests predicted together in one forward pass.

Each request hands its picture to ``DynamicBatcher.submit`` and awaits its own future. One loop
takes the first waiting picture, waits at most ``max_wait_s`` for more (up to ``max_batch``), and
runs them as one call of ``predict`` in a single worker thread (the network runs one batch at a
time; the event loop stays free to receive and answer requests). Results are matched to requests
by position in the batch: ``predict`` returns one mask per picture, in order, as
``Predictor.predict_arrays`` does. The queue is bounded: a full queue is ``QueueFullError`` at once
(the server answers 503), never an unbounded wait or unbounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

PredictFunction = Callable[[Sequence[np.ndarray], Sequence[tuple[int, int]]], list[np.ndarray]]


class QueueFullError(RuntimeError):
    """The batcher's queue holds ``max_queue`` pictures already; the request is refused."""


@dataclass
class BatchResult:
    """One request's mask (H×W float32 in [0, 1]) and the size of the batch it was predicted in."""

    mask: np.ndarray
    batch_size: int


@dataclass(eq=False)
class _Job:
    image: np.ndarray  # H×W×3 uint8 RGB
    size: tuple[int, int]  # (H, W) of its mask
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    """Gathers the pictures of concurrent requests into batches of at most ``max_batch``.

    Args:
        predict: masks of a list of pictures at the given sizes, one per picture, in order.
        max_batch: the largest batch.
        max_wait_s: how long the first picture of a batch waits for others.
        max_queue: the most pictures waiting (not counting the batch running).
        on_batch: called with each batch's size before it runs (metrics).
    """

    def __init__(self, predict: PredictFunction, max_batch: int = 8, max_wait_s: float = 0.01,
                 max_queue: int = 64, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, max_wait_s >= 0; got {max_batch}, {max_queue}, "
                             f"{max_wait_s}")
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self._jobs: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """Pictures waiting for a batch."""
        return len(self._jobs)

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pgnet-batch")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish the pictures already queued, then stop the loop and its thread."""
        while self._jobs:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._executor = None

    async def submit(self, image: np.ndarray, size: tuple[int, int]) -> BatchResult:
        """The mask of ``image`` at ``size``, once its batch has run; ``QueueFullError`` at once when
        the queue is full. Cancelling the caller (a deadline) drops the picture if it has not started."""
        if self._task is None or self._arrived is None:
            raise RuntimeError("the batcher is not running")
        if len(self._jobs) >= self.max_queue:
            raise QueueFullError(f"{len(self._jobs)} pictures are waiting already (the limit)")
        job = _Job(image, size, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._arrived.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.max_wait_s
            while len(self._jobs) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            batch = [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]
            batch = [job for job in batch if not job.future.done()]  # drop those whose caller gave up
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                masks = await loop.run_in_executor(
                    self._executor, self.predict, [job.image for job in batch], [job.size for job in batch])
                if len(masks) != len(batch):
                    raise RuntimeError(f"predict returned {len(masks)} masks for {len(batch)} pictures")
            except Exception as error:  # every request of the batch gets the error; the loop goes on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, mask in zip(batch, masks):
                if not job.future.done():
                    job.future.set_result(BatchResult(mask, len(batch)))
