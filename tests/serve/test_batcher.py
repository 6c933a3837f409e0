"""pgnet.serve.batcher: batches of concurrent pictures, results back to their own caller, bounded queue."""

import asyncio

import numpy as np
import pytest

from pgnet.serve.batcher import DynamicBatcher, QueueFullError


def tagged(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


def echo(images, sizes):
    """Each picture's own value as its mask, so that a mix-up shows."""
    return [np.full(size, float(image[0, 0, 0]), np.float32) for image, size in zip(images, sizes)]


def test_concurrent_pictures_share_batches_and_get_their_own_results():
    batches = []

    async def scenario():
        batcher = DynamicBatcher(echo, max_batch=4, max_wait_s=0.05, max_queue=32, on_batch=batches.append)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(tagged(value), (1, value + 1)) for value in range(10)))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    for value, result in enumerate(results):
        assert result.mask.shape == (1, value + 1) and (result.mask == value).all()
    assert sum(batches) == 10 and max(batches) == 4 and all(size <= 4 for size in batches)


def test_a_full_queue_refuses_at_once_and_errors_reach_every_caller_of_the_batch():
    def failing(images, sizes):
        if any(image[0, 0, 0] == 9 for image in images):
            raise RuntimeError("network failed")
        return echo(images, sizes)

    async def scenario():
        batcher = DynamicBatcher(failing, max_batch=2, max_wait_s=0.2, max_queue=2)
        batcher.start()
        first = [asyncio.ensure_future(batcher.submit(tagged(value), (1, 1))) for value in (9, 1)]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(QueueFullError):
            await batcher.submit(tagged(2), (1, 1))
        outcomes = await asyncio.gather(*first, return_exceptions=True)
        after = await batcher.submit(tagged(3), (1, 1))  # the loop survived the failure
        await batcher.stop()
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    assert (after.mask == 3).all() and after.batch_size == 1


def test_a_caller_that_gave_up_is_left_out_of_its_batch():
    seen = []

    def record(images, sizes):
        seen.extend(int(image[0, 0, 0]) for image in images)
        return echo(images, sizes)

    async def scenario():
        batcher = DynamicBatcher(record, max_batch=4, max_wait_s=0.1, max_queue=8)
        batcher.start()
        waiting = asyncio.ensure_future(batcher.submit(tagged(5), (1, 1)))
        kept = asyncio.ensure_future(batcher.submit(tagged(6), (1, 1)))
        await asyncio.sleep(0.01)
        waiting.cancel()
        result = await kept
        await batcher.stop()
        return result

    assert (asyncio.run(scenario()).mask == 6).all()
    assert seen == [6]
