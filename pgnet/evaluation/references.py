"""Published scores as data: reference files, and the rows they add to a report.

A reference file is YAML (``pgnet/evaluation/references/*.yaml`` ships PGNet's three published
settings; the format is described at the top of ``pgnet.yaml``)::

    references:
      pgnet-dh:
        method: PGNet (DH) published      # row label
        source: Xie et al., CVPR 2022 ...  # printed under every table
        training: DUTS-TR + HRSOD-TR      # optional
        decimals: 3                       # optional: the precision the source prints
        scores:
          DAVIS-S: {Sm: 0.947, maxFm: 0.948, MAE: 0.012, mBA: 0.716}

:func:`resolve_references` turns ``--reference`` values (a shipped key, or a path to a file, which adds
every entry in it) into :class:`Reference` objects; a bad file is a :class:`ReferenceFileError` naming
the file and the key at fault.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pgnet.data.registry import get_layout
from pgnet.errors import UnknownNameError, UserError, format_list
from pgnet.metrics import METRIC_GROUPS

RESULT_KEYS: tuple[str, ...] = tuple(key for keys in METRIC_GROUPS.values() for key in keys)
_ENTRY_FIELDS = {"method", "source", "training", "decimals", "scores"}


class ReferenceFileError(UserError):
    """A reference file that cannot be read or does not follow the format; the message names the file
    and the key."""


@dataclass(frozen=True)
class Reference:
    """Published scores of one method: ``scores[dataset][metric key]``."""

    key: str
    method: str
    source: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    training: str | None = None
    decimals: int = 3
    file: Path | None = None

    def values(self, dataset: str) -> dict[str, float]:
        """The scores on ``dataset`` (names compare as the registry's: ``duts-te`` is ``DUTS-TE``); {} if none."""
        wanted = canonical_dataset_name(dataset)
        for name, values in self.scores.items():
            if canonical_dataset_name(name) == wanted:
                return values
        return {}

    def label(self) -> str:
        """``METHOD [KEY, trained on TRAINING]``."""
        training = f", trained on {self.training}" if self.training else ""
        return f"{self.method} [{self.key}{training}]"

    def describe(self) -> str:
        """``METHOD [KEY, trained on TRAINING]: SOURCE``, one line."""
        return f"{self.label()}: {self.source}"


def canonical_dataset_name(name: str) -> str:
    """A registered dataset's own spelling (``duts_te`` -> ``DUTS-TE``); other names as they are."""
    try:
        layout = get_layout(name)
    except KeyError:
        return name
    return name if layout.name == "generic" else layout.name


def shipped_reference_files() -> list[Path]:
    """The reference files shipped with pgnet (``pgnet/evaluation/references/*.yaml``)."""
    folder = resources.files("pgnet.evaluation") / "references"
    return sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith((".yaml", ".yml")))


def shipped_references() -> dict[str, Reference]:
    """Every shipped reference by key."""
    found: dict[str, Reference] = {}
    for path in shipped_reference_files():
        found.update(load_reference_file(path))
    return found


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ReferenceFileError(f"{where}: expected a non-negative number, got {value!r}")
    return float(value)


def _entry(path: Path, key: str, entry: Any) -> Reference:
    where = f"{path}: references.{key}"
    if not isinstance(entry, Mapping):
        raise ReferenceFileError(f"{where}: expected a mapping with method, source and scores")
    unknown = sorted(set(map(str, entry)) - _ENTRY_FIELDS)
    if unknown:
        raise ReferenceFileError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(_ENTRY_FIELDS))}")
    for required in ("method", "source", "scores"):
        if required not in entry:
            raise ReferenceFileError(f"{where}: missing {required}")
    for text in ("method", "source", "training"):
        if text in entry and (not isinstance(entry[text], str) or not entry[text].strip()):
            raise ReferenceFileError(f"{where}.{text}: expected a non-empty string, got {entry[text]!r}")
    decimals = entry.get("decimals", 3)
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 8:
        raise ReferenceFileError(f"{where}.decimals: expected an integer from 0 to 8, got {decimals!r}")
    scores_in = entry["scores"]
    if not isinstance(scores_in, Mapping) or not scores_in:
        raise ReferenceFileError(f"{where}.scores: expected a mapping of dataset -> {{metric: value}}")
    scores: dict[str, dict[str, float]] = {}
    for dataset, metrics in scores_in.items():
        name = canonical_dataset_name(str(dataset))
        if name in scores:
            raise ReferenceFileError(f"{where}.scores: dataset {name} is given twice")
        if not isinstance(metrics, Mapping) or not metrics:
            raise ReferenceFileError(f"{where}.scores.{dataset}: expected a mapping of metric -> value")
        values: dict[str, float] = {}
        for metric, value in metrics.items():
            if metric not in RESULT_KEYS:
                raise ReferenceFileError(f"{where}.scores.{dataset}.{metric}: unknown metric; "
                                         f"known: {', '.join(RESULT_KEYS)}")
            values[metric] = _number(value, f"{where}.scores.{dataset}.{metric}")
        scores[name] = values
    return Reference(str(key), entry["method"].strip(), " ".join(entry["source"].split()), scores,
                     entry.get("training"), decimals, path)


def load_reference_file(path: str | Path) -> dict[str, Reference]:
    """The references of one file by key; raises ReferenceFileError naming the file and key at fault."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ReferenceFileError(f"reference file {path} cannot be read: {error}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ReferenceFileError(f"reference file {path} is not valid YAML: {error}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("references"), Mapping):
        raise ReferenceFileError(f"{path}: expected a top-level 'references:' mapping of key -> entry")
    extra = sorted(set(map(str, document)) - {"references"})
    if extra:
        raise ReferenceFileError(f"{path}: unknown top-level key(s) {', '.join(extra)} (only 'references')")
    if not document["references"]:
        raise ReferenceFileError(f"{path}: 'references' is empty")
    return {str(key): _entry(path, str(key), entry) for key, entry in document["references"].items()}


def resolve_references(names: Iterable[str]) -> list[Reference]:
    """``--reference`` values in order: a shipped key (``pgnet-dh``) or a reference file (every entry
    in it). Unknown keys raise UnknownNameError listing the shipped ones; a key given twice is an error."""
    shipped: dict[str, Reference] | None = None
    found: list[Reference] = []
    for name in names:
        path = Path(name).expanduser()
        if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
            if not path.is_file():
                raise ReferenceFileError(f"reference file {path} does not exist")
            found += load_reference_file(path).values()
            continue
        shipped = shipped if shipped is not None else shipped_references()
        if name not in shipped:
            raise UnknownNameError(f"unknown reference {name!r}; shipped: {', '.join(shipped)} "
                                   "(or give a reference file, .yaml)")
        found.append(shipped[name])
    keys = [reference.key for reference in found]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UserError(f"reference {format_list(repeated)} given more than once")
    return found


def reference_datasets(references: Sequence[Reference]) -> list[str]:
    """Every dataset some reference has scores for, in first-seen order."""
    return list(dict.fromkeys(name for reference in references for name in reference.scores))
