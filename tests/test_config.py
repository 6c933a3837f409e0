"""YAML configs: inheritance, overrides and errors that name the key."""

from pathlib import Path

import pytest

from pgnet.config import ConfigError, load_config, model_config_from_dict, save_config
from pgnet.models import ModelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path, text):
    path.write_text(text)
    return path


def test_base_inheritance_merge_and_delete(tmp_path):
    write(tmp_path / "base.yaml", "name: base\ntrain: {epochs: 5, seed: 3}\noptim: {name: adamw, lr: 0.001}\n")
    write(tmp_path / "mid.yaml", "_base_: base.yaml\ntrain: {epochs: 7}\n")
    config_file = write(
        tmp_path / "top.yaml",
        "_base_: [mid.yaml]\nname: top\noptim: {_delete_: true, lr: 0.5}\n",
    )
    config = load_config(config_file)
    assert config.name == "top"
    assert (config.train.epochs, config.train.seed) == (7, 3)
    assert config.optim.lr == 0.5 and config.optim.name == "sgd"  # _delete_ dropped the inherited name


def test_dotted_overrides_with_yaml_values(tmp_path):
    config = load_config(
        None,
        ["train.epochs=8", "data.batch_size=4", "model.graft_points=[r5-s2, r4-s1]", "train.clip_grad=1.5",
         "data.train=[{name: DUTS-TR, root: data/DUTS}, {name: HRSOD-TR, root: data/HRSOD, repeat: 4}]"],
    )
    assert config.train.epochs == 8 and config.data.batch_size == 4 and config.train.clip_grad == 1.5
    assert config.model == ModelConfig(graft_points=("r5-s2", "r4-s1"))
    assert [(e.name, e.repeat) for e in config.data.train] == [("DUTS-TR", 1), ("HRSOD-TR", 4)]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", r"unknown key train\.epoch; did you mean train\.epochs\?"),
        ("trian.epochs=3", r"unknown key trian; did you mean train\?"),
        ("train.epochs=many", r"train\.epochs: expected an integer, got 'many'"),
        ("train.epochs=2.5", r"train\.epochs: expected an integer"),
        ("optim.lr=fast", r"optim\.lr: expected a number"),
        ("optim.name=adam", r"optim\.name: 'adam' is not one of \['sgd', 'adamw'\]"),
        ("data.train=[{root: data/DUTS}]", r"missing required value data\.train\[0\]\.name"),
        ("model.swin_pretrainde=x.pth", r"did you mean model\.swin_pretrained"),
        ("train.sync_bn=1", r"train\.sync_bn: expected true or false"),
        ("train", r"not of the form key\.sub=value"),
    ],
)
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_resolved_config_round_trips(tmp_path):
    config = load_config(CONFIGS / "pgnet_dh.yaml", ["train.epochs=2"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("name", ["demo", "pgnet_d", "pgnet_dh", "pgnet_uh"])
def test_shipped_configs_are_valid(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.data.train


def test_official_settings():
    dh = load_config(CONFIGS / "pgnet_dh.yaml")
    assert [(e.name, e.repeat) for e in dh.data.train] == [("DUTS-TR", 1), ("HRSOD-TR", 4)]
    assert (dh.optim.name, dh.optim.lr, dh.optim.swin_lr_scale, dh.optim.momentum) == ("sgd", 0.03, 0.1, 0.9)
    assert dh.optim.nesterov and dh.optim.weight_decay == 5e-4
    assert (dh.train.epochs, dh.schedule.warmup_epochs, dh.data.batch_size) == (32, 16, 16)
    assert dh.data.multiscale == [960, 992, 1024, 1056, 1088]
    assert (dh.loss.side_cnn, dh.loss.side_swin, dh.loss.attention) == (0.125, 0.125, 1.0)
    uh = load_config(CONFIGS / "pgnet_uh.yaml")
    assert [e.name for e in uh.data.train] == ["UHRSD-TR", "HRSOD-TR"]


def test_yaml_off_and_no_stay_strings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  amp: off\n  deterministic: true\n")
    config = load_config(path, overrides=["train.compile=false"])
    assert config.train.amp == "off" and config.train.deterministic is True and config.train.compile is False
    assert load_config(path, overrides=["train.amp=off"]).train.amp == "off"


def test_augmentations_and_normalisation_are_chosen_in_yaml(tmp_path):
    from pgnet.data.transforms import IMAGENET_MEAN
    from pgnet.distributed import DistInfo
    from pgnet.train.data_setup import TrainingData

    path = tmp_path / "aug.yaml"
    path.write_text(
        "data:\n  preset: official\n  normalization: imagenet\n  augment: {color_jitter: 0.3, rotate: 5}\n"
        "  train: [{name: synthetic, n: 2, size: 32}]\n  size: 32\n  num_workers: 0\n"
    )
    config = load_config(path)
    assert config.data.augment.color_jitter == 0.3 and config.data.augment.hflip is None
    data = TrainingData(config.data, seed=0, micro_batch=1, dist=DistInfo(), logger=None)
    assert data.mean == IMAGENET_MEAN
    pipeline = repr(data.dataset.datasets[0].transform) if hasattr(data.dataset, "datasets") else repr(
        data.dataset.transform
    )
    assert "ColorJitter" in pipeline and "Rotate" in pipeline
    with pytest.raises(ConfigError, match=r"data\.augment\.rotat"):
        load_config(path, overrides=["data.augment.rotation=3"])


def numeric_fields():
    """(Dataclass, field) for every int/float (or list of them) field of the schema."""
    import dataclasses
    import typing

    from pgnet.config import Config

    found, pending = [], [Config]
    while pending:
        cls = pending.pop()
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            hint = hints[field.name]
            parts = [hint, *typing.get_args(hint)]
            parts += [inner for part in parts for inner in typing.get_args(part)]
            pending += [p for p in parts if dataclasses.is_dataclass(p)]
            if any(p in (int, float) for p in parts):
                found.append(f"{cls.__name__}.{field.name}")
    return found


def test_every_numeric_value_has_a_range():
    from pgnet.config_ranges import RANGES

    fields = numeric_fields()
    assert "TrainConfig.epochs" in fields and "ModelConfig.width" in fields and "DataConfig.multiscale" in fields
    assert sorted(set(fields) - set(RANGES)) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.val_every=0", r"train\.val_every: 0 is out of range \(allowed: an integer >= 1\)"),
        ("train.grad_accum=0", r"train\.grad_accum: 0 is out of range \(allowed: an integer >= 1\)"),
        ("model.width=0", r"model\.width: 0 is out of range"),
        ("data.multiscale=[64, 0]", r"data\.multiscale\[1\]: 0 is out of range \(allowed: an integer >= 32\)"),
        ("data.multiscale=[]", r"data\.multiscale: expected at least 1 values, got 0"),
        ("data.size=0", r"data\.size: 0 is out of range"),
        ("data.batch_size=-2", r"data\.batch_size: -2 is out of range"),
        ("optim.lr=.nan", r"optim\.lr: expected a finite number, got nan"),
        ("optim.lr=0", r"optim\.lr: 0\.0 is out of range \(allowed: a number > 0\)"),
        ("train.epochs=0", r"train\.epochs: 0 is out of range"),
        ("schedule.warmup_epochs=-3", r"schedule\.warmup_epochs: -3\.0 is out of range \(allowed: a number >= 0\)"),
        ("train.ema_decay=1", r"train\.ema_decay: 1\.0 is out of range \(allowed: a number > 0 and < 1\)"),
        ("data.train=[{name: synthetic, repeat: -1}]", r"data\.train\[0\]\.repeat: -1 is out of range"),
        ("train.best_metric=nope", r"train\.best_metric: 'nope' is not a validation metric \(MAE, Sm, "),
        ("train.device=foo", r"train\.device: 'foo' is not a device"),
        ("train.epochs=[1", r"override 'train\.epochs=\[1': '\[1' is not a valid YAML value"),
        ("data.val=[{name: a, root: x, label: v}, {name: b, root: y, label: v}]",
         r"data\.val: label 'v' is given to more than one validation set"),
    ],
)
def test_values_out_of_range_fail_naming_key_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_numbers_and_duplicate_keys(tmp_path):
    path = write(tmp_path / "run.yaml", "optim:\n  lr: 1e-3\n  weight_decay: 5E-4\ntrain:\n  epochs: 10\n")
    config = load_config(path, ["schedule.min_lr_ratio=1e-2"])
    assert (config.optim.lr, config.optim.weight_decay, config.schedule.min_lr_ratio) == (1e-3, 5e-4, 1e-2)
    assert config.train.epochs == 10 and isinstance(config.train.epochs, int)
    write(tmp_path / "twice.yaml", "train:\n  epochs: 3\n  seed: 1\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: invalid YAML: duplicate key 'epochs'"):
        load_config(tmp_path / "twice.yaml")


def test_yaml_merge_keys_bring_an_anchored_mapping_that_own_keys_override(tmp_path):
    path = write(tmp_path / "merge.yaml", (
        "data:\n"
        "  train:\n"
        "    - &duts {name: DUTS-TR, root: data/DUTS}\n"
        "    - {<<: *duts, repeat: 4}\n"
        "  val:\n"
        "    - <<: *duts\n"
        "      name: DUTS-TE\n"
    ))
    config = load_config(path)
    assert [(entry.name, entry.root, entry.repeat) for entry in config.data.train] == [
        ("DUTS-TR", "data/DUTS", 1), ("DUTS-TR", "data/DUTS", 4)]
    assert [(entry.name, entry.root) for entry in config.data.val] == [("DUTS-TE", "data/DUTS")]
    write(tmp_path / "twice.yaml", "train: {<<: {epochs: 3}, seed: 1, seed: 2}\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(tmp_path / "twice.yaml")


def test_a_model_config_dict_is_checked_as_the_model_section_of_a_file():
    config = ModelConfig(swin="swin_tiny_patch4_window7_224", graft_points=("r5-s2", "r4-s1"), drop_path_rate=0)
    assert model_config_from_dict(config.to_dict()) == config
    for override, values in (("model.width=0", {"width": 0}), ("model.graft_points=r5-s2", {"graft_points": "r5-s2"}),
                             ("model.widht=64", {"widht": 64})):
        with pytest.raises(ConfigError) as from_file:
            load_config(None, [override])
        with pytest.raises(ConfigError) as from_dict:
            model_config_from_dict(values)
        assert str(from_dict.value) == str(from_file.value)
    with pytest.raises(ConfigError, match=r"^model_config\.width: expected an integer, got '64'; "
                                          r"model_config\.window_shift: expected true or false, got 1$"):
        model_config_from_dict({"width": "64", "num_heads": 4, "window_shift": 1}, "model_config")
