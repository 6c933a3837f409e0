"""Conversion of the official PGNet checkpoints to this project's parameter names.

The official release is a state dict saved from DDP (keys prefixed ``module.``). Every source key is
either renamed to a parameter or buffer of ``PGNet`` (default config), or listed as unused: the
never-run ``swin.norm`` and the Swin buffers timm recomputes (checked to agree). A key that is
unknown, missing or of another shape is an error naming it: nothing loads partially.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pgnet.errors import UserError
from pgnet.models.backbones import RECOMPUTED_BUFFER_SUFFIXES, swin_official_to_timm_key
from pgnet.models.pgnet import PGNet
from pgnet.models.weights import WeightsFit, compare_weights

# Inner names of the official blocks → ours (first path segment after the block prefix).
_FUSION_BLOCK = {"short_cut": "shortcut", "conv": "merge", "conv2": "refine"}
_CMGM = {
    "k": "key",
    "qv": "query_value",
    "proj": "proj",
    "conv": "attention_conv",
    "bn": "attention_norm",
    "lnx": "norm_cnn",
    "lny": "norm_swin",
    "conv2": "refine",
}

# (official prefix, our prefix, inner renames or None). First match wins.
OFFICIAL_PREFIXES: tuple[tuple[str, str, dict[str, str] | None], ...] = (
    ("decoder.sqz_s2.", "decoder.graft.reduce_swin.", None),
    ("decoder.sqz_r5.", "decoder.graft.reduce_cnn.", None),
    ("decoder.GF.", "decoder.graft.cmgm.", _CMGM),
    ("decoder.d1.squeeze1.", "decoder.swin4_block.reduce.", None),
    ("decoder.d1.squeeze2.", "decoder.swin4_block.dilated.", None),
    ("decoder.d2.", "decoder.swin3_block.", _FUSION_BLOCK),
    ("decoder.d3.", "decoder.graft_block.", _FUSION_BLOCK),
    ("decoder.d4.db2.", "decoder.cnn4_block.fuse.", _FUSION_BLOCK),
    ("decoder.d4.conv3x3.", "decoder.cnn4_block.mix.", None),
    ("decoder.d4.sqz_r4.", "decoder.cnn4_block.reduce_cnn.", None),
    ("decoder.d4.sqz_s1.", "decoder.cnn4_block.reduce_swin.", None),
    ("decoder.d5.", "decoder.cnn3_block.", _FUSION_BLOCK),
    ("decoder.d6.", "decoder.cnn2_block.", _FUSION_BLOCK),
    ("linear1.", "head_pred.", None),
    ("linear2.", "head_side_cnn.", None),
    ("linear3.", "head_side_swin.", None),
    ("conv.", "attention_heads.0.", None),
    ("resnet.", "resnet.", None),
    ("swin.", "swin.", None),
)
UNUSED_PREFIXES = ("swin.norm.",)  # built by the official code, never run


class ConversionError(UserError):
    """A checkpoint does not fit the model; the message names the keys."""


def official_to_project_key(key: str) -> str | None:
    """Our name for an official key, or None when the key is not part of the official model."""
    for official, ours, inner in OFFICIAL_PREFIXES:
        if key.startswith(official):
            rest = key[len(official) :]
            if inner is not None:
                head, _, tail = rest.partition(".")
                if head not in inner:
                    return None
                rest = f"{inner[head]}.{tail}"
            renamed = ours + rest
            return swin_official_to_timm_key(renamed) if ours == "swin." else renamed
    return None


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix DDP adds, from every key or none (a mix is an error)."""
    prefixed = [k.startswith("module.") for k in state_dict]
    if all(prefixed):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    if any(prefixed):
        raise ConversionError("some keys start with 'module.' and some do not: not one model's state dict")
    return dict(state_dict)


def is_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    keys = strip_ddp_prefix(state_dict) if state_dict else {}
    return "decoder.GF.qv.weight" in keys


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: PGNet | None = None,
    *,
    partial: bool = False,
    source: str = "official checkpoint",
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official PGNet state dict for ``model`` (the default PGNet when None).

    Returns the converted state dict (exactly the model's keys) and the sorted unused source keys.
    Raises ``ConversionError`` naming ``source`` and any unknown, missing or mis-shaped key, and any
    recomputed buffer whose value disagrees with the model's.

    With ``partial`` every key is only renamed (an unknown key is still an error) and nothing is
    unused: no model is needed, and fitting the result to one is left to
    ``pgnet.models.weights.load_weights_with_report``, which lists what the model has and lacks
    (``swin.norm`` and the recomputed buffers come out unused there).
    """
    renamed: dict[str, torch.Tensor] = {}
    file_names: dict[str, str] = {}  # our key -> the official one
    notes: list[str] = []
    for key, value in strip_ddp_prefix(state_dict).items():
        ours = official_to_project_key(key)
        if ours is None:
            notes.append(f"unknown key {key}")
            continue
        ours = ours.replace("atten_mask", "attn_mask")
        renamed[ours] = value
        file_names[ours] = key
    if partial:
        fit = WeightsFit(loaded=list(renamed))
    else:
        model = model if model is not None else PGNet()
        fit = compare_weights(renamed, model.state_dict(), drop=_unused_key, file_names=file_names)
        buffers = dict(model.named_buffers())
        notes += [
            f"buffer {file_names[key]} does not match the model's recomputed {key}"
            for key in fit.dropped
            if key.endswith(RECOMPUTED_BUFFER_SUFFIXES) and not _same_values(buffers.get(key), renamed[key])
        ]
    fit.check(source, "PGNet", notes=notes, error=ConversionError)
    return {key: renamed[key] for key in fit.loaded}, sorted(file_names[key] for key in fit.dropped)


def _unused_key(key: str) -> bool:
    """Keys the conversion leaves out on purpose: never-run modules and buffers timm recomputes."""
    return key.startswith(UNUSED_PREFIXES) or key.endswith(RECOMPUTED_BUFFER_SUFFIXES)


def _same_values(mine: torch.Tensor | None, theirs: torch.Tensor) -> bool:
    return mine is not None and mine.shape == theirs.shape and torch.equal(mine.to(theirs.dtype), theirs)
