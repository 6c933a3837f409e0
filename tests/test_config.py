"""YAML configs: inheritance, overrides and errors that name the key."""

from pathlib import Path

import pytest

from pgnet.config import ConfigError, load_config, save_config
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
    from pgnet.engine.data_setup import TrainingData
    from pgnet.engine.distributed import DistInfo

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
