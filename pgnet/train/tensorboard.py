"""TensorBoard logging of a training run: scalars, PR curves, pictures, the layout and the descriptions.

:class:`TrainingBoard` owns the ``SummaryWriter``; the :class:`TensorBoard` callback writes a run's
events through it (rank 0 only), capturing the CMGM attention for the training pictures. Tags
(``<point>`` a grafting point such as ``r5-s2``, ``<set>`` a validation set, ``<picture>`` one of
the fixed validation pictures as ``<set>/<name>``, ``<query>`` object, boundary or background):

- scalars: ``loss/total``, ``loss/pred``, ``loss/side_cnn``, ``loss/side_swin``,
  ``loss/attention/<point>``; ``lr/<group>``; ``speed/images_per_second``; ``memory/peak_gib``
  (CUDA); ``data/skipped_samples`` (only when non-zero); ``val/<set>/<metric>``.
- PR curves: ``val/<set>/pr``.
- pictures: ``prediction/train``, ``prediction/val/<picture>``, ``attention/<point>/train/<query>``,
  ``attention/<point>/val/<picture>/<query>``, ``agl/<point>/train``, ``agl/<point>/val/<picture>``.
- once per run: the text ``about/pictures`` and the custom-scalars layout.

Training pictures show the first image of a training batch at the step whose losses they go with;
validation pictures show the same few validation images at every validation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.image.metadata import create_summary_metadata
from tensorboard.util.tensor_util import make_tensor_proto
from torch import nn
from torch.utils.tensorboard.summary import pr_curve_raw

from pgnet.data.transforms import denormalize
from pgnet.train.callbacks import Callback, StepResult, Trainer, ValidationResult, is_due
from pgnet.train.run_setup import peak_memory_gib
from pgnet.train.tb_history import open_summary_writer
from pgnet.train.visualize import (
    agl_picture,
    attention_query_picture,
    capture_cmgm_attention,
    mask_on_grid,
    prediction_picture,
    query_pictures,
    query_points,
    window_of_query,
)
from pgnet.writing import encode_image

logger = logging.getLogger(__name__)

PICTURE_SAMPLES = 3  # validation images shown at every validation

DESCRIPTIONS = {
    "prediction": "The input, its ground truth, the prediction and the two side outputs (CNN and Swin, on the "
                  "graft grid), each through the sigmoid on one 0–1 gray scale. `val/...` tags show the same "
                  "validation image at every validation; `train` shows the first image of a training batch.",
    "attention": "Where one query token (ringed: inside the object, on its boundary, or in the background) looks "
                 "in the CMGM of this grafting point: its softmax attention row over the key tokens, for the mean "
                 "of the heads and for each head. Colour and opacity follow the weight on one scale for the whole "
                 "picture (colour bar), so a flat head stays dark and a sharp one shows bright spots.",
    "agl": "What the attention-guided loss compares: for each query, the row of σ(attention logits) beside its "
           "target mask(query)·mask(key) and their absolute difference; below, the whole N×N matrices with the "
           "tokens sorted object first, where the target is a block matrix. These are the attention head's "
           "logits (one map per grafting point), not the per-head softmax of the attention pictures.",
    "pr": "Precision and recall are means over the set's images at 256 thresholds (the curve behind maxFm, as "
          "pysodmetrics computes it). The TP/FP/TN/FN counts in the tooltip are pixels summed over the set, so "
          "TP/(TP+FP) is the pooled precision and can differ from the mean shown.",
}

ABOUT = """\
**Pictures.** *prediction*: input, ground truth, prediction and both side outputs on a 0–1 gray scale; \
the `val/...` tags show the same validation images at every validation, so the step slider shows one picture \
learning, while `train` shows a training image every `train.image_every` steps.

*attention/&lt;point&gt;/.../&lt;query&gt;*: the CMGM's softmax attention of one query token (ringed) over the key \
tokens, as the mean of the heads and per head, on one inferno scale per picture (colour bar), overlaid with \
opacity following the weight. The query sits deepest inside the object, on its boundary, or deepest in the \
background away from the border.

*agl/&lt;point&gt;/...*: what the attention-guided loss compares, σ of the attention head's logits beside the \
target mask(q)·mask(k), per query row and as whole N×N matrices with the tokens sorted object first (the target \
is then a block matrix). This is a different quantity from the per-head softmax above.

**Scalars.** The *Custom Scalars* tab groups Sm, MAE and maxFm of every validation set, the loss terms and the \
learning rates in one chart each. `loss/attention/<point>` is the AGL of one grafting point.
"""

LAYOUT = {
    "validation (all sets)": {
        "S-measure (higher is better)": ["Multiline", [r"^val/.*/Sm$"]],
        "MAE (lower is better)": ["Multiline", [r"^val/.*/MAE$"]],
        "max F-measure (higher is better)": ["Multiline", [r"^val/.*/maxFm$"]],
    },
    "training": {
        "losses": ["Multiline", [r"^loss/"]],
        "learning rates": ["Multiline", [r"^lr/"]],
    },
}

WINDOW_NOTE = (" For a windowed grafting point the attention stays inside non-overlapping windows, so each query "
               "has its own picture of the window around it (zero where the window overhangs the feature).")


def loss_tag(term: str, graft_points: Sequence[str]) -> str:
    """The scalar tag of a loss term: ``attention`` / ``attention_<k>`` (the AGL of the k-th grafting
    point) become ``loss/attention/<point>``; other names stay as they are."""
    if term == "attention" or (term.startswith("attention_") and term[len("attention_"):].isdigit()):
        index = 0 if term == "attention" else int(term[len("attention_"):])
        if index < len(graft_points):
            return f"loss/attention/{graft_points[index]}"
    return f"loss/{term}"


class TrainingBoard:
    """The TensorBoard events of one run in ``log_dir``.

    ``resume_step``: the global step of the checkpoint a run resumes from: the events after it are
    replaced, those up to it kept (see ``pgnet.train.tb_history``); ``fresh`` (a new run) writes the
    text and the custom-scalars layout. ``mean``/``std`` undo the input normalisation
    for pictures.
    """

    picture_count = PICTURE_SAMPLES  # validation images the callback passes to ``validation_pictures``

    def __init__(self, log_dir: str | Path, *, resume_step: int | None, graft_points: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], fresh: bool):
        self.writer = open_summary_writer(log_dir, resume_step)
        self.graft_points = tuple(graft_points)
        self.mean, self.std = tuple(mean), tuple(std)
        self._warned: set[str] = set()
        if fresh:
            self.writer.add_text("about/pictures", ABOUT, 0)
            self.writer.add_custom_scalars(LAYOUT)

    # ------------------------------------------------------------------ scalars

    def losses(self, step: int, terms: Mapping[str, float], learning_rates: Mapping[str, float],
               images_per_second: float, peak_memory_gib: float | None = None) -> None:
        """The loss terms, learning rates, speed and (on CUDA) peak memory of a training step."""
        for name, value in terms.items():
            self.writer.add_scalar(loss_tag(name, self.graft_points), value, step)
        for group, value in learning_rates.items():
            self.writer.add_scalar(f"lr/{group}", value, step)
        self.writer.add_scalar("speed/images_per_second", images_per_second, step)
        if peak_memory_gib is not None:
            self.writer.add_scalar("memory/peak_gib", peak_memory_gib, step)

    def skipped_samples(self, step: int, count: int) -> None:
        """Unreadable samples skipped in an epoch; nothing is written for none."""
        if count:
            self.writer.add_scalar("data/skipped_samples", count, step)

    def validation(self, step: int, name: str, metrics: Mapping[str, float],
                   curves: Mapping[str, np.ndarray] | None) -> None:
        """A validation set's metrics (``val/<name>/<metric>``) and its PR curve (``val/<name>/pr``)."""
        for key, value in metrics.items():
            self.writer.add_scalar(f"val/{name}/{key}", value, step)
        if curves is not None and {"precision", "recall", "true_pos"} <= set(curves):
            self._pr_curve(step, f"val/{name}/pr", curves)

    def _pr_curve(self, step: int, tag: str, curves: Mapping[str, np.ndarray]) -> None:
        """Mean precision/recall with the pixel counts summed over the set (float32 in the event file, so
        counts above 2²⁴ are rounded). Thresholds ascend in TensorBoard: the curves are reversed."""
        order = np.argsort(curves["threshold"])
        columns = [np.asarray(curves[key], dtype=np.float64)[order]
                   for key in ("true_pos", "false_pos", "true_neg", "false_neg", "precision", "recall")]
        summary = pr_curve_raw(tag, *columns, num_thresholds=len(order))
        self._write(summary, step, DESCRIPTIONS["pr"])

    # ------------------------------------------------------------------ pictures

    def training_pictures(self, step: int, batch: Mapping[str, Any], output: Any,
                          attention: Sequence[torch.Tensor]) -> None:
        """Pictures of the first image of a training batch; ``attention`` is what
        :func:`pgnet.train.visualize.capture_cmgm_attention` captured in its forward pass."""
        image = denormalize(batch["image"][0].detach().float().cpu(), self.mean, self.std).permute(1, 2, 0).numpy()
        self._pictures(step, "train", image, batch["mask"][0].detach().cpu(), output, attention, index=0)

    @torch.no_grad()
    def validation_pictures(self, step: int, model: nn.Module, samples: Sequence[tuple[str, dict[str, Any]]],
                            device: torch.device, autocast: Callable[[], AbstractContextManager]) -> None:
        """Predict each (label, eval sample) with ``model`` (in eval mode) and log its pictures."""
        for label, sample in samples:
            image = sample["image"].unsqueeze(0).to(device)  # 1×3×S×S
            with capture_cmgm_attention(model) as attention, autocast():
                output = model(image, need_attention=True)
            pixels = denormalize(sample["image"].float(), self.mean, self.std).permute(1, 2, 0).numpy()
            mask = torch.nn.functional.interpolate(sample["mask"].float().reshape(1, 1, *sample["mask"].shape[-2:]),
                                                   size=pixels.shape[:2], mode="bilinear", align_corners=False)[0]
            self._pictures(step, f"val/{label}", pixels, mask, output, attention, index=0)

    def _pictures(self, step: int, where: str, image: np.ndarray, mask: torch.Tensor, output: Any,
                  attention: Sequence[torch.Tensor], index: int) -> None:
        """The prediction, attention and AGL pictures of image ``index`` of ``output``."""
        name = where.split("/", 1)[1] if "/" in where else "training batch"
        prediction = prediction_picture(image, mask, output.pred[index], output.side_cnn[index],
                                        output.side_swin[index], title=f"{name}: prediction")
        self._image(f"prediction/{where}", prediction, step, DESCRIPTIONS["prediction"])
        per_head = list(attention) if len(attention) == len(output.attention) else []
        windows = list(getattr(output, "attention_windows", None) or [])
        for point_index, (logits, grid) in enumerate(zip(output.attention, output.attention_grids)):
            point = self.graft_points[point_index] if point_index < len(self.graft_points) else f"point{point_index}"
            if point_index < len(windows) and windows[point_index] is not None:
                heads = per_head[point_index] if per_head else None
                self._window_pictures(step, where, point, image, mask, logits[index], heads, index, grid,
                                      windows[point_index])
                continue
            tokens = grid[0] * grid[1]
            if tuple(logits.shape[-2:]) != (tokens, tokens):
                self._warn_once(point, f"attention pictures of {point} skipped: logits {tuple(logits.shape)} "
                                       f"do not match its {grid[0]}×{grid[1]} grid")
                continue
            title = f"{point}, {name}"
            if per_head and tuple(per_head[point_index].shape[-2:]) == (tokens, tokens):
                for query, picture in query_pictures(image, mask, per_head[point_index][index], grid, title).items():
                    self._image(f"attention/{point}/{where}/{query}", picture, step, DESCRIPTIONS["attention"])
            points = query_points(mask_on_grid(mask, grid).numpy())
            agl = agl_picture(image, mask, logits[index], grid, points, f"{title}: attention-guided loss")
            self._image(f"agl/{point}/{where}", agl, step, DESCRIPTIONS["agl"])

    def _window_pictures(self, step: int, where: str, point: str, image: np.ndarray,
                         mask: torch.Tensor, logits: torch.Tensor, heads: torch.Tensor | None, index: int,
                         grid: tuple[int, int], layout: Any) -> None:
        """The attention and AGL pictures of a windowed point: for each query, the window around it.

        ``logits``: n×w²×w² (this image's windows); ``heads``: (B·n)×heads×w²×w² softmax, or None.
        """
        windows_per_image = logits.shape[0]
        for query, position in query_points(mask_on_grid(mask, grid).numpy()).items():
            crop, crop_mask, window, inside, corner = window_of_query(image, mask, grid, layout, position)
            title = f"{point}, {query} query, {layout[0]}×{layout[0]} window at {corner}"
            if heads is not None and heads.shape[0] % windows_per_image == 0 and heads.shape[-1] == layout[0] ** 2:
                window_heads = heads[index * windows_per_image + window]  # heads×w²×w²
                picture = attention_query_picture(crop, crop_mask, window_heads, (layout[0], layout[0]), inside,
                                                  title)
                self._image(f"attention/{point}/{where}/{query}", picture, step, DESCRIPTIONS["attention"]
                            + WINDOW_NOTE)
            agl = agl_picture(crop, crop_mask, logits[window], (layout[0], layout[0]), {query: inside},
                              f"{title}: attention-guided loss")
            self._image(f"agl/{point}/{where}/{query}", agl, step, DESCRIPTIONS["agl"] + WINDOW_NOTE)

    # ------------------------------------------------------------------ writing

    def _image(self, tag: str, picture: np.ndarray, step: int, description: str) -> None:
        """An H×W×3 uint8 RGB picture as a PNG in TensorBoard's tensor format (the legacy image format
        loses the description in TensorBoard's fast loader)."""
        png = encode_image(np.ascontiguousarray(picture), ".png")
        height, width = picture.shape[:2]
        value = Summary.Value(tag=tag, metadata=create_summary_metadata(display_name="", description=""),
                              tensor=make_tensor_proto([str(width).encode(), str(height).encode(), png.tobytes()]))
        self._write(Summary(value=[value]), step, description)

    def _write(self, summary: Any, step: int, description: str) -> None:
        """Write a summary whose (single) value carries ``description`` (shown in TensorBoard)."""
        summary.value[0].metadata.summary_description = description
        self.writer.file_writer.add_summary(summary, step)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TensorBoard(Callback):
    """The run's TensorBoard events in ``RUN/tb`` (rank 0): the losses, learning rates, speed and peak
    memory of every logged step, the unreadable samples of each epoch, every validation's metrics, PR
    curves and pictures, and every ``image_every`` steps the pictures of the step's first training
    image, with the CMGM attention captured in its forward pass (``image_every`` 0: no pictures).

    The events are flushed before every checkpoint, so that a resumed run finds all those of the steps
    before its checkpoint on disk; those after it are replaced (see ``pgnet.train.tb_history``).
    """

    def __init__(self, image_every: int):
        self.image_every = image_every
        self.board: TrainingBoard | None = None
        self._capture: contextlib.ExitStack | None = None  # the attention capture of a picture step
        self._attention: list[torch.Tensor] = []

    def setup(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            resume_step = trainer.position.global_step if trainer.resumed else None
            self.board = TrainingBoard(trainer.run_dir / "tb", resume_step=resume_step, mean=trainer.data.mean,
                                       std=trainer.data.std, graft_points=trainer.model.decoder.graft_points,
                                       fresh=trainer.position.global_step == 0)

    def on_micro_batch_start(self, trainer: Trainer, step: int, index: int, batch: Mapping[str, Any]) -> None:
        if self.board is not None and index == 0 and is_due(step, self.image_every):
            self._capture = contextlib.ExitStack()
            self._attention = self._capture.enter_context(capture_cmgm_attention(trainer.model))

    def on_micro_batch_end(self, trainer: Trainer, step: int, index: int, batch: Mapping[str, Any],
                           output: Any) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None
            self.board.training_pictures(step, batch, output, self._attention)  # at the step of its losses

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if self.board is not None and result.log:
            learning_rates = {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}
            self.board.losses(result.step, result.losses, learning_rates, result.images_per_second,
                              peak_memory_gib(trainer.device))

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, skipped: int) -> None:
        if self.board is not None:
            self.board.skipped_samples(trainer.position.global_step, skipped)

    def on_validation_end(self, trainer: Trainer, result: ValidationResult) -> None:
        if self.board is None:
            return
        for name, metrics in result.metrics.items():
            self.board.validation(result.step, name, metrics, result.curves[name])
        if self.image_every:
            self.board.validation_pictures(result.step, trainer.validation_model,
                                           trainer.data.picture_samples(self.board.picture_count), trainer.device,
                                           trainer.train_step.autocast)

    def on_save(self, trainer: Trainer, name: str) -> None:
        if self.board is not None:
            self.board.flush()

    def teardown(self, trainer: Trainer) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        if self.board is not None:
            self.board.close()
