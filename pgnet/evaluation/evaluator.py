"""Evaluation: a checkpoint on named datasets, or prediction folders against ground-truth folders.

- :func:`~pgnet.evaluation.scoring.accumulate_model` is the one way a dataset is predicted for
  evaluation (the trainer's validation uses it too).
- :func:`~pgnet.evaluation.folders.accumulate_folder` scores prediction files against mask files
  (``match_predictions`` pairs them by file stem and reports the missing ones).
- :func:`evaluate` runs either or both over several datasets and methods and writes an
  :class:`~pgnet.evaluation.report.EvaluationReport` (with any published references beside them)
  after every dataset.

Predictions of method M on dataset D live at ``<folder>/D/<name>.png`` (what ``save_dir`` writes);
a method folder without a ``D`` subfolder is read directly when a single dataset is evaluated. A union
dataset (DIS-TE) may also be read from its parts' folders (``<folder>/DIS-TE1`` ... ``DIS-TE4``).

The metrics are the suite's default groups, plus those the dataset's benchmark reports (HCE on
DIS5K), unless a list is given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from pgnet.checkpoint import load_model_and_preprocessing
from pgnet.config import ConfigError, dataset_options, load_config, validation_labels
from pgnet.data.datasets import build_dataset
from pgnet.data.io import MASK_EXTENSIONS, list_files
from pgnet.data.loader import build_eval_loader
from pgnet.data.preprocessing import Preprocessing, normalization_stats
from pgnet.data.registry import SYNTHETIC_NAME, DatasetSpec, pair_dataset, resolve_dataset
from pgnet.data.transforms import build_eval_transform
from pgnet.device import resolve_device
from pgnet.distributed import DistInfo, gather_objects, shard_of, stop_together
from pgnet.errors import UserError, format_list
from pgnet.evaluation.folders import PREDICTION_EXTENSIONS, accumulate_folder, match_predictions, prediction_folder
from pgnet.evaluation.references import Reference
from pgnet.evaluation.report import EvaluationReport, MethodResult, format_table
from pgnet.evaluation.scoring import accumulate_model
from pgnet.metrics import ALL_METRICS, SODMetrics, resolve_metric_groups
from pgnet.predict.int8 import Int8Calibration, find_calibration, input_range
from pgnet.predict.runtime import InferenceRuntime
from pgnet.writing import check_overwrites

logger = logging.getLogger(__name__)


class MissingPredictionsError(FileNotFoundError, UserError):
    """Masks without a prediction (evaluate the rest with ``allow_missing``)."""


@dataclass
class EvalDataset:
    """A test set: masks, and the images a model needs (None when only prediction folders are scored).

    A ``data.val`` entry of a training config keeps its builder dict (``options``): the model is then
    scored on exactly what the training validated on (a held-out split, built-in synthetic pictures,
    which have no folders: ``mask_dir`` None).
    """

    name: str
    mask_dir: Path | None
    image_dir: Path | None = None
    spec: Any = None  # the registry's DatasetSpec, when resolved by name
    options: dict[str, Any] | None = None  # a config entry's builder dict (``pgnet.config.dataset_options``)

    @property
    def mask_dirs(self) -> list[Path]:
        """The mask folders: a union's parts' (DIS-TE), else ``mask_dir``."""
        if self.spec is not None and self.spec.parts:
            return [mask_dir for _, mask_dir in self.spec.folders]
        return [self.mask_dir]

    @property
    def part_names(self) -> list[str]:
        """The names of a union's parts; [] for any other dataset."""
        return [part.name for part in self.spec.parts] if self.spec is not None else []

    @property
    def default_metrics(self) -> tuple[str, ...]:
        """The metric groups evaluated when none are given: the suite's default ones and the
        dataset's own (``DatasetSpec.metrics``: HCE on DIS5K)."""
        extra = tuple(self.spec.metrics) if self.spec is not None else ()
        return resolve_metric_groups([*ALL_METRICS, *extra])


@dataclass
class ModelMethod:
    """A checkpoint to evaluate, and how to run it."""

    checkpoint: Path
    name: str | None = None  # default: derived from the checkpoint path (see ``method_name``)
    weights: str = "model"
    size: int | None = None  # None: the checkpoint's test size (1024 officially)
    normalization: str | None = None  # None: the checkpoint's statistics; "official"/"imagenet" override them
    fast_decode: bool = False  # reduced JPEG decode and uint8 resize (default: the official protocol)
    precision: str = "auto"
    calibration: Path | None = None  # int8 calibration (``pgnet-calibrate``; default: a package's own)
    flip: bool = False
    optimize: bool = True  # the fast inference paths of ``pgnet.predict.acceleration.inference_network``
    batch_size: int = 1
    num_workers: int = 2
    save_dir: Path | None = None  # write OUT/<method>/<dataset>/<name>.png

    @property
    def method_name(self) -> str:
        """``name``, else the checkpoint's stem; ``best``/``last``/... of a run become ``<run>-best``."""
        if self.name:
            return self.name
        path = Path(self.checkpoint)
        if path.stem in ("best", "last", "model", "checkpoint"):
            run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            return f"{run.name}-{path.stem}" if run.name else path.stem
        return path.stem


# --------------------------------------------------------------------------------------------------
# Whole evaluations


def resolve_datasets(names: Sequence[str], root: str | Path) -> list[EvalDataset]:
    """Registered datasets by name under ``root`` (errors name the root and the dataset)."""
    datasets = []
    for name in names:
        spec = resolve_dataset(name, root)
        datasets.append(EvalDataset(spec.name, spec.mask_dir, spec.image_dir, spec))
    return datasets


def config_datasets(config_path: str | Path) -> list[EvalDataset]:
    """The ``data.val`` sets of a training config, as its training validates on them: each entry's
    pictures (its held-out part for ``split: val``; built-in synthetic sets drawn from their seed),
    named with the training's validation labels."""
    entries = load_config(config_path).data.val
    if not entries:
        raise ConfigError(f"{config_path}: data.val lists no dataset")
    datasets = []
    for label, entry in zip(validation_labels(entries), entries):
        try:
            options = dataset_options(entry)
        except ConfigError as error:
            raise ConfigError(f"{config_path}: {error}") from None
        if entry.name.lower() == SYNTHETIC_NAME:
            datasets.append(EvalDataset(label, None, options=options))
            continue
        spec = resolve_dataset(entry.name, entry.root)
        datasets.append(EvalDataset(label, spec.mask_dir, spec.image_dir, spec, options=options))
    return datasets


def check_saved_predictions(datasets: Sequence[EvalDataset], method: ModelMethod,
                            prediction_dirs: Mapping[str, Path]) -> None:
    """Refuse ``method.save_dir`` outputs that would overwrite an image, a mask or a prediction file
    read by this evaluation, or each other (``pgnet.writing.check_overwrites``), before any work."""
    if method.save_dir is None:
        return
    inputs: list[Path] = []
    outputs: list[tuple[Path, Path]] = []
    for dataset in datasets:
        if dataset.mask_dir is None:  # built-in pictures: nothing on disk to protect
            continue
        inputs += [mask for folder in dataset.mask_dirs if folder.is_dir()
                   for mask in list_files(folder, MASK_EXTENSIONS)]
        if dataset.image_dir is None or not dataset.image_dir.is_dir():
            continue
        spec = dataset.spec or DatasetSpec(dataset.name, dataset.mask_dir.parent, dataset.image_dir, dataset.mask_dir)
        pairs = pair_dataset(spec).pairs
        inputs += [image for image, _ in pairs]
        folder = method.save_dir / method.method_name / dataset.name
        outputs += [(folder / f"{image.stem}.png", image) for image, _ in pairs]
    for folder in prediction_dirs.values():
        if folder.is_dir():
            inputs += list_files(folder, PREDICTION_EXTENSIONS, recursive=True)
    check_overwrites(outputs, inputs, what="saved prediction")


def method_preprocessing(method: ModelMethod, recorded: Preprocessing) -> Preprocessing:
    """The preprocessing to run ``method`` with: the checkpoint's ``recorded`` one, with the method's
    explicit size and normalisation taking precedence."""
    mean, std = recorded.mean, recorded.std
    if method.normalization is not None:
        mean, std = normalization_stats(method.normalization)
    return Preprocessing(mean, std, recorded.eval_size if method.size is None else int(method.size))


def _load_dataset(dataset: EvalDataset, method: ModelMethod, preprocessing: Preprocessing) -> Dataset:
    """The dataset of images at the test size (masks at their size), warning about unpaired masks."""
    transform = build_eval_transform(preprocessing.eval_size, preprocessing.mean, preprocessing.std,
                                     fast_decode=method.fast_decode)
    if dataset.mask_dir is None and dataset.options is not None:  # built-in synthetic pictures
        return build_dataset(dataset.options, transform)
    if dataset.image_dir is None:
        raise UserError(f"dataset {dataset.name}: a model needs images, but only masks ({dataset.mask_dir}) are known")
    spec = dataset.spec or DatasetSpec(dataset.name, dataset.mask_dir.parent, dataset.image_dir, dataset.mask_dir)
    unpaired = pair_dataset(spec).unpaired_masks
    if unpaired:
        logger.warning("%s: %d masks have no image in %s and are not scored: %s", dataset.name, len(unpaired),
                       spec.describe(), format_list([p.name for p in unpaired]))
    return build_dataset(dataset.options if dataset.options is not None else spec, transform)


def _merged(metrics: SODMetrics, count: int, info: DistInfo) -> tuple[SODMetrics, int]:
    """Every process's ``metrics`` merged in rank order, and the images they scored in all (on every
    process, so that all go on alike); ``metrics`` and ``count`` themselves for a single process."""
    gathered = gather_objects((metrics.state_dict(), count), info)
    if len(gathered) == 1:
        return metrics, count
    merged = SODMetrics(metrics.groups, device=metrics.device)
    for state, _ in gathered:
        merged.merge(state)
    return merged, sum(scored for _, scored in gathered)


def _evaluate_model(runtime: InferenceRuntime, dataset: EvalDataset, method: ModelMethod,
                    preprocessing: Preprocessing, metric_names: Sequence[str], progress: bool,
                    info: DistInfo) -> MethodResult:
    """Score ``method`` on ``dataset`` with the network, device and precision of ``runtime``; each
    process of a group scores its share of the images (``info``), and the metrics are merged."""
    data = _load_dataset(dataset, method, preprocessing)
    save_dir = method.save_dir / method.method_name / dataset.name if method.save_dir is not None else None
    metrics = SODMetrics(metric_names, device=runtime.device)
    with stop_together(info):
        share = data if info.world_size == 1 else Subset(data, shard_of(range(len(data)), info))
        loader = build_eval_loader(share, batch_size=method.batch_size, num_workers=method.num_workers)
        count = accumulate_model(runtime.network, loader, runtime.device, metrics, autocast=runtime.autocast,
                                 flip=method.flip, channels_last=runtime.channels_last, save_dir=save_dir,
                                 progress=progress, description=f"{method.method_name} {dataset.name}")
    metrics, count = _merged(metrics, count, info)
    notes = []
    skipped = len(data) - count
    if skipped:
        notes.append(f"{skipped} of {len(data)} pairs were unreadable and not scored (see the warnings)")
    if count == 0:
        raise RuntimeError(f"{dataset.name}: no image could be scored")
    return _result(dataset.name, method.method_name, metrics, count, notes)


def dataset_prediction_dirs(method_dir: Path, dataset: EvalDataset, single_dataset: bool) -> list[Path]:
    """The folders holding a method's predictions of ``dataset``: ``prediction_folder``'s, or for a
    union without its own folder (``method_dir/DIS-TE``) its parts' folders when they all exist."""
    if dataset.part_names and not (Path(method_dir) / dataset.name).is_dir():
        parts = [Path(method_dir) / name for name in dataset.part_names]
        if all(part.is_dir() for part in parts):
            return parts
    return [prediction_folder(method_dir, dataset.name, single_dataset)]


def _evaluate_folder(method: str, folders: Sequence[Path], dataset: EvalDataset, device: torch.device,
                     metric_names: Sequence[str], allow_missing: bool, workers: int, progress: bool,
                     info: DistInfo) -> MethodResult:
    """Score a method's prediction files on ``dataset``; each process of a group scores its share of
    the pairs (``info``), and the metrics are merged."""
    if dataset.mask_dir is None:
        raise UserError(f"dataset {dataset.name}: built-in pictures have no mask files to score prediction folders on")
    match = match_predictions(folders, dataset.mask_dirs)
    where = ", ".join(map(str, folders))
    notes = []
    if match.missing:
        masks = ", ".join(map(str, dataset.mask_dirs))
        message = (f"{method} on {dataset.name}: {len(match.missing)} of {len(match.missing) + len(match.pairs)} "
                   f"masks in {masks} have no prediction in {where}: {format_list(match.missing)}")
        if not allow_missing or not match.pairs:
            raise MissingPredictionsError(message + ("" if allow_missing else " (--allow-missing scores the rest)"))
        logger.warning("%s; scoring the %d that have one", message, len(match.pairs))
        notes.append(f"{len(match.missing)} masks without a prediction were left out: {format_list(match.missing)}")
    if match.extra:
        logger.info("%s on %s: %d predictions have no mask and are ignored: %s", method, dataset.name,
                    len(match.extra), format_list(match.extra))
    metrics = SODMetrics(metric_names, device=device)
    with stop_together(info):
        count, resized = accumulate_folder(shard_of(match.pairs, info), metrics, device, workers=workers,
                                           progress=progress, description=f"{method} {dataset.name}")
    resized = [note for notes in gather_objects(resized, info) for note in notes]
    metrics, count = _merged(metrics, count, info)
    if resized:
        logger.warning("%s on %s: %d predictions differ in size from their masks and were resized to them: %s",
                       method, dataset.name, len(resized), format_list(resized))
        notes.append(f"{len(resized)} predictions were resized to their masks")
    return _result(dataset.name, method, metrics, count, notes)


def _result(dataset: str, method: str, metrics: SODMetrics, count: int, notes: list[str]) -> MethodResult:
    curves = metrics.curves()
    has_curves = "fm" in curves or "em" in curves
    return MethodResult(dataset, method, metrics.compute(), count, curves if has_curves else None, notes)


def evaluate(
    datasets: Sequence[EvalDataset],
    output_dir: str | Path,
    *,
    model_method: ModelMethod | None = None,
    prediction_dirs: Mapping[str, str | Path] | None = None,
    metrics: Sequence[str] | None = None,
    references: Sequence[Reference] = (),
    latex_metrics: Sequence[str] | None = None,
    plots: bool = True,
    device: str | torch.device | None = None,
    allow_missing: bool = False,
    workers: int = 2,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
    dist_info: DistInfo | None = None,
) -> EvaluationReport:
    """Evaluate a checkpoint and/or prediction folders (method name -> folder) on ``datasets``.

    ``metrics`` (groups) are computed on every dataset; None: each dataset's ``default_metrics`` (the
    suite's, plus HCE on DIS5K). ``references`` (published scores) are put beside the methods with a
    Δ row per method; ``latex_metrics`` are the columns of ``results.tex`` (see ``EvaluationReport``).
    After each dataset the report in ``output_dir`` is rewritten (tables and, with ``plots``, that
    dataset's curves),
    and its table is passed to ``echo``. Missing predictions raise ``MissingPredictionsError``
    unless ``allow_missing``; then the masks that have one are scored, and the report says so.

    ``dist_info``: this process of a torchrun group (``pgnet.distributed.init_distributed``; ``device``
    already the rank's own, ``rank_device``): each process predicts and scores its share of every
    dataset's images (saving those predictions), the metrics are merged on every process, and the
    main one alone writes the report and echoes; every process returns the same report.
    """
    prediction_dirs = {name: Path(folder) for name, folder in (prediction_dirs or {}).items()}
    if model_method is None and not prediction_dirs:
        raise UserError("nothing to evaluate: give a checkpoint or prediction folders")
    if not datasets:
        raise UserError("no datasets to evaluate")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise UserError(f"dataset names must be unique, got {names}")
    methods = ([model_method.method_name] if model_method else []) + list(prediction_dirs)
    if len(set(methods)) != len(methods):
        raise UserError(f"method names must be unique, got {methods}")
    clashes = sorted(set(methods) & {reference.method for reference in references})
    if clashes:
        raise UserError(f"method {format_list(clashes)} has the name of a reference row; rename it (--name)")
    info = dist_info or DistInfo()
    device = resolve_device(device)
    metric_groups = {d.name: tuple(metrics) if metrics is not None else d.default_metrics for d in datasets}
    meta: dict[str, Any] = {"datasets": names, "methods": methods, "device": str(device),
                            "metrics": {name: list(groups) for name, groups in metric_groups.items()}}
    if references:
        meta["references"] = [reference.key for reference in references]
    if model_method is not None:
        check_saved_predictions(datasets, model_method, prediction_dirs)
    runtime = None
    if model_method is not None:
        loaded, recorded = load_model_and_preprocessing(model_method.checkpoint, "cpu", weights=model_method.weights)
        preprocessing = method_preprocessing(model_method, recorded)
        calibration_file = find_calibration(model_method.checkpoint, model_method.calibration)
        calibration = Int8Calibration.read(calibration_file)
        runtime = InferenceRuntime.create(loaded, device, model_method.precision, optimize=model_method.optimize,
                                          calibration=calibration,
                                          image_range=input_range(preprocessing.mean, preprocessing.std))
        meta["checkpoint"] = str(model_method.checkpoint)
        meta.update(size=preprocessing.eval_size, mean=list(preprocessing.mean), std=list(preprocessing.std),
                    fast_decode=model_method.fast_decode, flip=model_method.flip, weights=model_method.weights,
                    precision=runtime.precision, optimize=model_method.optimize)  # resolved: auto → fp32, bf16 or int8
        if calibration is not None:
            meta["calibration"] = str(calibration_file)
    meta["prediction_dirs"] = {name: str(folder) for name, folder in prediction_dirs.items()}
    report = EvaluationReport(output_dir, meta, references, latex_metrics)

    single = len(datasets) == 1
    for dataset in datasets:
        groups = metric_groups[dataset.name]
        if runtime is not None:
            report.add(_evaluate_model(runtime, dataset, model_method, preprocessing, groups, progress, info))
        for method, folder in prediction_dirs.items():
            report.add(_evaluate_folder(method, dataset_prediction_dirs(folder, dataset, single), dataset, device,
                                        groups, allow_missing, workers, progress, info))
        if not info.is_main:
            continue
        report.write(plot_dataset=dataset.name if plots else None)
        if echo is not None:
            echo(format_table([r for r in report.results if r.dataset == dataset.name], markdown=False,
                              references=report.references))
    if info.is_main:
        logger.info("results written to %s", os.fspath(report.folder))
    return report
