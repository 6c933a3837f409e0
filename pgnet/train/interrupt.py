"""Stopping a training run on request.

The first Ctrl-C or SIGTERM (schedulers, ``timeout``) asks the trainer to finish the current step,
save ``last.pth`` and stop with :class:`TrainingInterrupted`; a second one stops at once. While
training, :func:`stop_signals_to` routes both signals to the trainer's handler. A callback asks the
same with ``Trainer.request_stop``.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or a callback: the run saved ``last.pth`` and stopped. ``exit_status`` is 128 +
    the signal (``signum`` True: SIGINT, as for a callback); the message is ``reason`` or the signal's name."""

    def __init__(self, signum: int | bool = signal.SIGINT, reason: str | None = None):
        stop = requested_signal(signum)
        super().__init__(reason or stop.name)
        self.exit_status = 128 + int(stop)


def requested_signal(requested: int | bool) -> signal.Signals:
    """The signal a stop request stands for: the one received, or SIGINT for a plain ``True``."""
    return signal.Signals(signal.SIGINT if requested is True else requested)


@contextlib.contextmanager
def stop_signals_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler(signum, frame)`` inside the block, their previous handlers
    come back after it. Outside the main thread (where Python cannot set handlers) nothing changes."""
    try:
        previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
