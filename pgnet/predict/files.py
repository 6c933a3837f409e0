"""Prediction over picture files: a ``Predictor`` run over ``FileJob``s, one output picture written each.

``predict_files`` is what ``pgnet-predict`` does with pictures (``pgnet.predict.output_plan`` decides where
each output goes, ``pgnet.predict.compose`` what it shows); ``pgnet.predict.video`` does videos and reports in the
same ``PredictionReport``.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from pgnet.data.io import ImageReadError, read_image_with_alpha
from pgnet.data.prefetch import prefetch
from pgnet.predict.batching import ArrayPredictor, predict_batches
from pgnet.predict.compose import Composer
from pgnet.predict.output_plan import FileJob
from pgnet.writing import NoSpaceError, write_image


@dataclass
class PredictionReport:
    """What ``predict_files`` (or ``pgnet.predict.video.predict_videos``) did: the outputs written and the
    inputs skipped, with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _write_output(job: FileJob, mask: np.ndarray, composer: Composer) -> Path:
    image = None if composer.mode == "mask" else read_image_with_alpha(job.source)  # RGB or RGBA
    if image is not None and image.shape[:2] != mask.shape:
        raise ImageReadError(job.source, f"decoded at {image.shape[:2]}, expected {mask.shape}")
    return write_image(job.output, composer(image, mask))


def predict_files(
    predictor: ArrayPredictor,
    jobs: Sequence[FileJob],
    mode: str = "mask",
    color: Sequence[int] | str | None = None,
    workers: int = 4,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **compose_options: Any,
) -> PredictionReport:
    """Predict every job's picture and write its output picture (see ``pgnet.predict.compose.compose`` for
    ``mode``, ``color`` and the ``compose_options`` background, blur and refine_foreground).

    Pictures are read (``predictor.load``) and outputs written by ``workers`` threads while the
    network runs; with fast decode each picture is resized to the network's input as soon as it is
    decoded, so at most ``batch_size + workers`` pictures (each under the pixel limit, see
    ``pgnet.data.io.max_pixels_limit``) wait at once. A picture that cannot be read or written is
    skipped, and ``log`` (default: print to stderr above the progress bar) gets a line naming it. A
    full disk stops the run with ``NoSpaceError`` (outputs are written atomically: nothing truncated
    is left).
    """
    composer = Composer(mode, color, **compose_options)
    report = PredictionReport()
    bar = tqdm(total=len(jobs), unit="img", disable=not progress, dynamic_ncols=True)
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    workers = max(1, int(workers))

    counting = threading.Lock()  # the bar counts from the reading loop and from the writing threads

    def count() -> None:
        with counting:
            bar.update(1)

    def skip(job: FileJob, error: BaseException) -> None:
        reason = error.reason if isinstance(error, ImageReadError) else str(error)
        report.skipped.append((job.source, reason))
        log(f"skipped {job.source}: {reason}")
        count()

    def written(future: Future) -> None:  # the bar moves as each output is written, not when collected
        if not future.cancelled() and future.exception() is None:
            count()

    writes: deque[tuple[FileJob, Future]] = deque()

    def finish_writes(keep: int) -> None:
        while len(writes) > keep:
            job, future = writes.popleft()
            try:
                report.written.append(future.result())
            except NoSpaceError:
                raise  # every later write would fail too: stop
            except (OSError, ValueError, cv2.error) as error:
                skip(job, error)

    def read(pool: ThreadPoolExecutor) -> Iterator[tuple[FileJob, np.ndarray, tuple[int, int]]]:
        """(job, picture, mask size) of each readable job, read ahead by the pool."""
        depth = predictor.batch_size + workers
        for job, future in prefetch(pool, lambda job: predictor.load(job.source, shrink=True), jobs, depth):
            try:
                image, size = future.result()
            except (OSError, ValueError, cv2.error) as error:
                skip(job, error)
                continue
            yield job, image, size

    with ThreadPoolExecutor(workers) as pool:
        for batch in predict_batches(predictor, read(pool)):
            for job, mask in batch:
                future = pool.submit(_write_output, job, mask, composer)
                future.add_done_callback(written)
                writes.append((job, future))
            finish_writes(keep=2 * workers)  # these writes run while the next batch is read and predicted
        finish_writes(keep=0)
    bar.close()
    return report
