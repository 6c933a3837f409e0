"""YAML configs: ``_base_`` inheritance, dotted command-line overrides, and a typed schema.

A config file is a mapping whose sections mirror the dataclasses below. ``_base_`` (a path or a list
of paths, relative to the file) names files merged first; a mapping with ``_delete_: true`` replaces
the inherited one instead of merging into it. Overrides such as ``train.epochs=8`` are YAML values
applied last. Everything is checked against the schema before anything runs: an unknown key, a
wrong type or a missing required value is an error naming the key (and the closest valid names).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pgnet.config_ranges import ConfigError, check_config, check_value
from pgnet.data.entry import SPLIT_KEYS, SYNTHETIC_KEYS, DatasetEntry  # the schema of data.train/data.val items
from pgnet.models.grafting import GRAFT_POINTS, GraftPointError, parse_graft_points
from pgnet.models.pgnet import ModelConfig


@dataclass
class AugmentConfig:
    """Overrides of the preset's augmentations (None: the preset's value)."""

    hflip: float | None = None  # probability of a horizontal flip
    border_crop: float | None = None  # largest fraction of each side a random crop removes
    color_jitter: float | None = None  # brightness/contrast/saturation strength (0: off)
    rotate: float | None = None  # largest rotation in degrees (0: off)
    scale_crop: float | None = None  # smallest area fraction of a random resized crop (0: off)


@dataclass
class DataConfig:
    train: list[DatasetEntry] = field(default_factory=lambda: [DatasetEntry(name="synthetic")])
    val: list[DatasetEntry] = field(default_factory=list)
    preset: Literal["official", "augmented"] = "official"  # training augmentation preset
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalization: Literal["official", "imagenet"] = "official"  # statistics, unless mean/std are given
    size: int = 1024  # training resize before the crop
    multiscale: list[int] = field(default_factory=lambda: [960, 992, 1024, 1056, 1088])
    eval_size: int = 1024
    fast_decode: bool = False  # validation: reduced JPEG decode, uint8 resize (official: full decode, float resize)
    batch_size: int = 16  # in all, over every process and accumulation step
    num_workers: int = 4
    mean: list[float] | None = None  # 0-255 scale; None: the statistics of `normalization`
    std: list[float] | None = None


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.03
    swin_lr_scale: float = 0.1  # the Swin branch trains at lr × this
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    no_decay_norm_bias: bool = False  # official: decay everything


@dataclass
class ScheduleConfig:
    # official_cosine: the official LR_Scheduler('cos'), cosine × T/W during the warm-up;
    # warmup_cosine / warmup_poly: a linear ramp, then the decay (see pgnet.train.optim.lr_factor)
    name: Literal["official_cosine", "warmup_cosine", "warmup_poly", "constant"] = "official_cosine"
    warmup_epochs: float = 16.0  # official: the first half (epochs // 2)
    min_lr_ratio: float = 0.0
    power: float = 0.9  # warmup_poly only


@dataclass
class LossConfig:
    pred: float = 1.0
    side_cnn: float = 0.125
    side_swin: float = 0.125
    attention: float = 1.0  # the attention-guided loss of each grafting point without its own weight
    attention_points: dict[str, float] = field(default_factory=dict)  # e.g. {r3-s1: 0.5}

    def __post_init__(self) -> None:
        for point, weight in self.attention_points.items():
            if point not in GRAFT_POINTS:
                raise ConfigError(f"loss.attention_points: {point!r} is not a grafting point {list(GRAFT_POINTS)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ConfigError(f"loss.attention_points.{point}: expected a number, got {weight!r}")


@dataclass
class TrainConfig:
    epochs: int = 32
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    grad_accum: int = 1
    clip_grad: float | None = None
    ema_decay: float | None = None
    compile: bool = False
    channels_last: bool | None = None  # None: on GPU only
    sync_bn: bool = True
    deterministic: bool = False
    max_nonfinite_steps: int = 0  # skip up to this many non-finite losses, then stop
    val_every: int = 1  # epochs
    best_metric: str = "Sm"
    best_mode: Literal["max", "min"] = "max"
    checkpoint_every_steps: int = 0  # also save `last` inside an epoch every N steps (0: epoch ends only)
    keep_recent: int = 3
    log_every: int = 10  # steps
    image_every: int = 1000  # steps between training-batch pictures; 0: no pictures (validation ones too)
    max_steps_per_epoch: int | None = None
    # fine-tuning (see pgnet.train.finetune)
    init_from: str | None = None  # starting weights: a project checkpoint or an official one
    init_weights: Literal["model", "ema"] = "model"  # which weights of a project checkpoint
    freeze: list[str] = field(default_factory=list)  # parts kept fixed: swin, resnet, decoder, graft, heads, ...


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs"
    name: str = "pgnet"
    # Written by the trainer: the changes accepted at each resume, [{step, key, old, new}, ...].
    resume_changes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)


# ---------------------------------------------------------------------------------------------
# Loading and merging


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans and floats: only true/false are booleans, so ``amp: off`` or ``name: no``
    stay strings, and ``1e-3`` is a number (YAML 1.1 wants ``1.0e-3``). A key given twice in one
    mapping is an error; merge keys (``<<: *anchor``) bring an anchored mapping's keys, which the
    mapping's own keys override."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # merged by SafeConstructor.flatten_mapping
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_YamlLoader.add_implicit_resolver(  # after int: YAML 1.2 floats that YAML 1.1 misses, e.g. 1e-3
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text):
    return yaml.load(text, Loader=_YamlLoader)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and value.get("_delete_"):
            merged[key] = {k: v for k, v in value.items() if k != "_delete_"}
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config with its ``_base_`` files merged in (bases first, in order)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as handle:
        try:
            content = _load_yaml(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config must be a mapping, found {type(content).__name__}")
    bases = content.pop("_base_", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, read_yaml_tree(path.parent / base, (*_seen, path)))
    return _deep_merge(merged, content)


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    values = _deep_merge({}, values)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form key.sub=value")
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = _load_yaml(text) if text else None
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"override {override!r}: {text!r} is not a valid YAML value ({problem})") from None
    return values


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load, merge and validate a config (the defaults when ``path`` is None)."""
    values = read_yaml_tree(path) if path is not None else {}
    return build_config(apply_overrides(values, overrides))


def keys_set(path: str | Path, overrides: Sequence[str] = (), section: str = "model") -> frozenset[str]:
    """The keys of ``section`` that the config file (with its ``_base_`` files) or the overrides set;
    the others take the schema's defaults (or, for ``model``, a ``train.init_from`` checkpoint's)."""
    values = apply_overrides(read_yaml_tree(path), overrides).get(section)
    return frozenset(values) if isinstance(values, dict) else frozenset()


def build_config(values: dict[str, Any]) -> Config:
    """Validate a plain nested dict against the schema (types, ranges, and names that must be unique)."""
    config = _from_plain(Config, values, "")
    _check_graft_points(config.model, "model")
    check_config(config)
    return config


def _check_graft_points(model: ModelConfig, key: str) -> None:
    """The grafting points parsed as the network will (known, each once, ``r5-s2`` among them)."""
    try:
        parse_graft_points(model.graft_points)
    except GraftPointError as error:
        raise ConfigError(f"{key}.{error}") from None


def model_config_from_dict(values: Any, key: str = "model") -> ModelConfig:
    """A :class:`ModelConfig` from plain values (a checkpoint's ``model_config``), checked as the
    ``model:`` section of a config file is: known keys, types and ranges.

    Raises ConfigError naming every bad value under ``key`` (``model_config.width: expected an
    integer, got '64'``), not only the first, separated by ``; ``.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(values).__name__}")
    problems = []
    for name, value in values.items():  # one at a time, to name every problem
        try:
            _from_plain(ModelConfig, {name: value}, f"{key}.")
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems))
    model = _from_plain(ModelConfig, values, f"{key}.")
    _check_graft_points(model, key)
    return model


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML, atomically."""
    from pgnet.writing import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# Schema checking


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# Scalar schema types: what a YAML value must be for each, and how the error names it. (YAML's
# true/false are Python bools, which are ints too: neither number type accepts them.)
_SCALARS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda value: isinstance(value, bool), "true or false"),
    int: (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    float: (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    str: (lambda value: isinstance(value, str), "a string"),
}


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _from_plain(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not {_describe(hint)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_hint = args[0] if args else Any
        items = [_convert(item_hint, item, f"{key}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint in _SCALARS:
        accepts, expected = _SCALARS[hint]
        if not accepts(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        if hint is float and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value) if hint is float else value
    raise ConfigError(f"{key}: unsupported schema type {_describe(hint)}")


def _from_plain(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown key {prefix}{key}{hint} (valid: {', '.join(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _convert(hints[f.name], values[f.name], prefix + f.name)
            check_value(cls, f.name, kwargs[f.name], prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required value {prefix}{f.name}")
    return cls(**kwargs)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# Dataset entries: what builds them, what names them (the trainer's validation and pgnet-eval --config)


def dataset_options(entry: DatasetEntry) -> dict[str, Any]:
    """The builder dict of one config entry (synthetic options only for synthetic data)."""
    options = dataclasses.asdict(entry)
    options.pop("label")
    if entry.split == "all" or entry.name.lower() == "synthetic":
        for key in SPLIT_KEYS:
            options.pop(key)
    if entry.name.lower() != "synthetic":
        for key in SYNTHETIC_KEYS:
            options.pop(key)
        if options["root"] is None:
            raise ConfigError(f"data: dataset {entry.name} needs a root")
    else:
        if entry.split != "all":
            raise ConfigError("data: synthetic data has no split; give the validation set another seed")
        options.pop("root")
    return options


def validation_labels(entries: Sequence[DatasetEntry]) -> list[str]:
    """A unique name per validation set: its ``label``, else its name, followed where that name is
    repeated by the shortest end of its root that tells them apart (``generic@setA``), or its seed
    for synthetic sets, or its position."""
    names = [entry.label or entry.name for entry in entries]
    labels = []
    for index, (entry, name) in enumerate(zip(entries, names)):
        twins = [other for other, other_name in zip(entries, names) if other_name == name and other.label is None]
        if entry.label is not None or len(twins) < 2:
            labels.append(name)
            continue
        if entry.root is None:
            labels.append(f"{name}@seed{entry.seed}")
            continue
        parts = Path(entry.root).parts
        roots = [Path(other.root).parts for other in twins if other.root is not None and other is not entry]
        for length in range(1, len(parts) + 1):
            if all(other[-length:] != parts[-length:] for other in roots):
                labels.append(f"{name}@{'-'.join(parts[-length:])}")
                break
        else:
            labels.append(f"{name}@{index + 1}")
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):  # still equal (the same set twice): number them
        seen[label] = seen.get(label, 0) + 1
        if labels.count(label) > 1:
            labels[index] = f"{label}#{seen[label]}"
    return labels
