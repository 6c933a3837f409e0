"""The one "do these weights fit?" report: what loads, what is missing, unexpected, mis-shaped or
dropped, and the one-line message each loader raises from it."""

import os
import pickle

import pytest
import torch

from pgnet.models.weights import CheckpointError, WeightsMismatchError, compare_weights, read_weights_file


def tensors(**shapes):
    return {key.replace("__", "."): torch.zeros(shape) for key, shape in shapes.items()}


TARGET = tensors(stem__weight=(4, 3), stem__bias=(4,), head__weight=(1, 4), head__bias=(1,))


def test_every_key_is_sorted_into_one_kind():
    weights = {**tensors(stem__weight=(4, 3), head__weight=(2, 4), extra__weight=(1,), fc__weight=(9,)),
               "head.bias": [0.0]}
    fit = compare_weights(weights, TARGET, drop=lambda key: key.startswith("fc."))
    assert fit.loaded == ["stem.weight"]
    assert fit.missing == ["stem.bias"]
    assert fit.mismatched == {"head.weight": ("(2, 4)", "(1, 4)"), "head.bias": ("list", "(1,)")}
    assert fit.unexpected == ["extra.weight"]
    assert fit.dropped == ["fc.weight"]


def test_the_message_names_the_subject_the_target_and_the_keys_in_one_line():
    fit = compare_weights(tensors(stem__weight=(4, 3), head__weight=(2, 4), extra__weight=(1,)), TARGET)
    with pytest.raises(CheckpointError) as raised:
        fit.check("checkpoint runs/x/last.pth (model weights)")
    assert str(raised.value) == (
        "checkpoint runs/x/last.pth (model weights) does not fit the model: wrong shapes: head.weight "
        "(file (2, 4), model (1, 4)); missing stem.bias, head.bias; unexpected extra.weight"
    )


def test_each_caller_tolerates_what_its_rule_allows():
    partial = compare_weights(tensors(stem__weight=(4, 3), extra__weight=(1,)), TARGET)
    partial.check("init.pth", missing=False, unexpected=False)  # new and unused keys are accounted, not errors
    with pytest.raises(CheckpointError, match=r"^init\.pth does not fit resnet18: unexpected extra\.weight$"):
        partial.check("init.pth", "resnet18", missing=False)
    shaped = compare_weights(tensors(stem__weight=(4, 4)), TARGET)
    with pytest.raises(WeightsMismatchError, match=r"wrong shapes: stem\.weight \(file \(4, 4\), model \(4, 3\)\)$"):
        shaped.check("init.pth", missing=False, error=WeightsMismatchError)


def test_renamed_keys_and_the_callers_notes_are_named_first():
    fit = compare_weights(tensors(head__weight=(2, 4)), TARGET, file_names={"head.weight": "linear1.weight"})
    with pytest.raises(CheckpointError) as raised:
        fit.check("official.pth", "PGNet", missing=False, notes=["unknown key decoder.extra"])
    assert str(raised.value) == (
        "official.pth does not fit PGNet: unknown key decoder.extra; wrong shapes: linear1.weight as head.weight "
        "(file (2, 4), model (1, 4))"
    )


def test_long_lists_are_cut_to_the_one_limit():
    with torch.device("meta"):  # the model side may be shapes only
        target = {f"blocks.{i}.weight": torch.zeros(2) for i in range(14)}
    fit = compare_weights({}, target)
    assert fit.missing == list(target) and not fit.loaded
    with pytest.raises(CheckpointError, match=r"missing blocks\.0\.weight, .*blocks\.9\.weight, \.\.\. \(4 more\)$"):
        fit.check("empty.pth")


class _RunsACommand:
    """Unpickled, this would run ``touch <marker>`` through ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "pickle"])
def test_a_file_that_would_run_code_is_refused_naming_the_file_and_the_global(tmp_path, container):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    if container == "zip":
        torch.save({"model": _RunsACommand(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": _RunsACommand(marker)}, protocol=2))
    with pytest.raises(CheckpointError) as raised:
        read_weights_file(path)
    message = str(raised.value)
    assert str(path) in message and "refused, because loading it could run code" in message
    assert ".system" in message  # posix.system (or os.system, as the unpickler names it)
    assert "\n" not in message and not marker.exists()


def test_a_truncated_plain_pickle_is_corrupt_in_one_line(tmp_path):
    path = tmp_path / "cut.pth"
    data = pickle.dumps({"a": 1, "b": [1, 2, 3]}, protocol=2)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_weights_file(path)
