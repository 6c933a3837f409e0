"""Reading ahead in threads: the one bounded prefetch of ``predict_files``, the video frame reader and
the evaluator's prediction folders."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

Item = TypeVar("Item")


def prefetch(pool: Executor, function: Callable[[Item], Any], items: Iterable[Item], depth: int
             ) -> Iterator[tuple[Item, Future]]:
    """(item, future of ``function(item)``) in the order of ``items``, with up to ``depth`` calls
    submitted to ``pool`` ahead (the one just yielded included), so at most ``depth`` results wait.

    The caller takes each ``future.result()``, and so decides what an error in one item does.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be positive, got {depth}")
    iterator = iter(items)
    pending = deque((item, pool.submit(function, item)) for item in itertools.islice(iterator, depth))
    while pending:
        yield pending.popleft()
        for item in itertools.islice(iterator, 1):
            pending.append((item, pool.submit(function, item)))
