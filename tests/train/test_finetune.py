"""Fine-tuning: starting weights with accounting (official and project checkpoints), frozen parts,
the held-out split of a folder, resuming a fine-tuning run, and clear errors before any training."""

import re
import shlex

import pytest
import torch
from helpers import make_folder
from test_callbacks import StopAfter
from test_trainer import REPO, TINY

from pgnet.checkpoint import load_checkpoint, save_checkpoint
from pgnet.config import load_config
from pgnet.data.datasets import build_dataset, build_train_dataset
from pgnet.data.loader import build_train_loader, set_loader_epoch
from pgnet.data.split import SplitError
from pgnet.data.transforms import build_eval_transform, build_train_transform
from pgnet.models.official import convert_official_state_dict
from pgnet.models.pgnet import ModelConfig, PGNet, create_model
from pgnet.models.weights import WeightsMismatchError, account_weights, load_weights_with_report
from pgnet.train.data_setup import check_held_out
from pgnet.train.finetune import model_parts, read_starting_weights
from pgnet.train.trainer import Trainer, TrainingInterrupted

# A tiny fine-tuning run: 8 pictures, 2 steps an epoch, SGD with momentum and weight decay.
FINETUNE = [
    *TINY,
    "data.train=[{name: synthetic, n: 8, size: 80, seed: 0}]",
    "data.val=[]",
    "data.multiscale=[64]",
    "optim.name=sgd",
    "optim.lr=0.01",
    "optim.weight_decay=0.0005",
    "train.max_steps_per_epoch=2",
    "train.image_every=0",
    "train.log_every=0",
]
OFFICIAL_UNUSED = [
    ("swin.layers.*.blocks.*.attn.relative_position_index", 22),
    ("swin.layers.*.blocks.*.attn_mask", 11),
    ("swin.norm", 2),
]


def tiny_config(*extra: str):
    return load_config(REPO / "configs" / "demo.yaml", [*FINETUNE, *extra])


@pytest.fixture(scope="module")
def official_converted(official_state):
    converted, unused = convert_official_state_dict(official_state, partial=True)
    assert unused == []  # partial: everything renamed, the accounting decides what is unused
    return converted


# The tiny default model (one grafting point) comes from the shared tiny run (conftest.py):
# ``tiny_trained_checkpoint`` holds its model and EMA weights, ``tiny_checkpoint`` its model weights only.


@pytest.fixture(scope="module")
def init_files(tiny_checkpoint, tmp_path_factory):
    """The starting-weight files the error cases name, written once."""
    folder = tmp_path_factory.mktemp("init_files")
    (folder / "text.pth").write_text("hello")
    torch.save({"weights": torch.zeros(2)}, folder / "plain.pth")
    save_checkpoint({**load_checkpoint(tiny_checkpoint), "ema": None}, folder / "no_ema.pth")
    return {"NOT_A_CHECKPOINT": folder / "text.pth", "NOT_A_STATE_DICT": folder / "plain.pth",
            "NO_EMA": folder / "no_ema.pth", "TINY": tiny_checkpoint}


def empty_model(**config) -> PGNet:
    """A model with storage but no initialisation (fast for Swin-B): every loaded tensor is checked."""
    with torch.device("meta"):
        model = PGNet(ModelConfig(**config))
    return model.to_empty(device="cpu")


def test_official_checkpoint_fills_the_default_model(official_converted):
    model = empty_model()
    report = load_weights_with_report(model, official_converted, "pgnet_dh.pth (official PGNet checkpoint, converted)")
    print("\n" + str(report))
    assert report.complete and report.new == [] and report.new_groups == []
    assert len(report.loaded) == len(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, official_converted[key]), key
    assert report.unused_groups == OFFICIAL_UNUSED
    assert "loaded: 654 of 654 model tensors" in str(report)


def test_official_checkpoint_into_two_grafting_points_lists_the_new_modules(official_converted):
    model = empty_model(graft_points=("r5-s2", "r4-s1"))
    report = load_weights_with_report(model, official_converted, "pgnet_dh.pth (official PGNet checkpoint, converted)")
    print("\n" + str(report))
    assert report.new_groups == [("decoder.cnn4_block.cmgm", 31), ("attention_heads.1", 2)]
    assert all(key.startswith(("decoder.cnn4_block.cmgm.", "attention_heads.1.")) for key in report.new)
    assert sorted(report.loaded) == sorted(k for k in official_converted if k in model.state_dict())
    assert len(report.loaded) == 654 and report.unused_groups == OFFICIAL_UNUSED


def test_an_official_file_is_read_and_converted(official_state, tmp_path):
    decoder_only = {k: v for k, v in official_state.items() if not k.startswith(("module.swin.", "module.resnet."))}
    torch.save(decoder_only, tmp_path / "PGNet_DUT+HR.pth")
    state, source, trained_with = read_starting_weights(tmp_path / "PGNet_DUT+HR.pth")
    assert source.endswith("PGNet_DUT+HR.pth (official PGNet checkpoint, converted)")
    assert trained_with == ModelConfig().to_dict()
    torch.testing.assert_close(state["head_pred.weight"], official_state["module.linear1.weight"], rtol=0, atol=0)
    with torch.device("meta"):
        report = account_weights(PGNet().state_dict(), state)
    assert {name for name, _ in report.new_groups} == {"swin", "resnet"} and not report.unused


def test_new_modules_keep_their_initialisation_and_shapes_must_match(tiny_checkpoint):
    model = create_model(tiny_config("model.graft_points=[r5-s2, r4-s1]").model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = load_checkpoint(tiny_checkpoint)["model"]
    report = load_weights_with_report(model, source)
    after = model.state_dict()
    for key in report.new:
        assert torch.equal(after[key], before[key]), key
    for key in report.loaded:
        assert torch.equal(after[key], source[key]), key
    assert {name for name, _ in report.new_groups} == {"decoder.cnn4_block.cmgm", "attention_heads.1"}

    wrong = dict(source, **{"head_pred.weight": torch.zeros(1, 32, 3, 3)})
    shapes = r"head_pred\.weight \(file \(1, 32, 3, 3\), model \(1, 64, 3, 3\)\)"
    with pytest.raises(WeightsMismatchError, match=shapes):
        load_weights_with_report(model, wrong)
    assert torch.equal(model.state_dict()["decoder.graft.cmgm.key.weight"], after["decoder.graft.cmgm.key.weight"])


def test_trainer_starts_from_ema_weights_with_fresh_optimiser_and_logs_the_accounting(tiny_trained_checkpoint,
                                                                                       tmp_path):
    tiny_checkpoint = tiny_trained_checkpoint  # with EMA weights
    trainer = Trainer(tiny_config(f"train.init_from={tiny_checkpoint}", "train.init_weights=ema",
                                  "model.swin_pretrained=/nonexistent/swin.pth"), tmp_path / "run")
    ema = load_checkpoint(tiny_checkpoint)["ema"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, ema[key]), key
    assert trainer.position.global_step == 0 and trainer.scheduler.last_epoch == 0
    assert not trainer.optimizer.state  # no momentum carried over
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"weights from {tiny_checkpoint} (ema weights):" in log
    assert "new (initialised here, not in the checkpoint): 0 tensors: none" in log
    assert "M parameters train" in log


def frozen_state(model, prefixes):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def test_frozen_parts_are_bitwise_unchanged_after_training(tmp_path):
    trainer = Trainer(tiny_config("train.freeze=[resnet, graft]", "train.epochs=1"), tmp_path / "run")
    model = trainer.model
    frozen_prefixes = ("resnet.", "decoder.graft.")
    before = frozen_state(model, frozen_prefixes)
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(frozen_prefixes)}
    assert any("running_mean" in k for k in before)  # BatchNorm statistics are part of the check
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in optimised for p in model.resnet.parameters())

    trainer.fit()
    assert not model.resnet.training and not model.decoder.graft.training  # also after network.train()
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    changed = [k for k, v in others.items() if not torch.equal(after[k], v)]
    assert any(k.startswith("decoder.swin4_block") and k.endswith("running_mean") for k in changed)
    assert any(k.startswith("head_pred") for k in changed)
    assert re.search(r"[\d.]+M of [\d.]+M parameters train; frozen \(eval mode\): resnet, decoder\.graft",
                     (tmp_path / "run" / "log.txt").read_text())


def test_part_names():
    with torch.device("meta"):
        model = PGNet(ModelConfig(graft_points=("r5-s2", "r4-s1")))
    parts = model_parts(model)
    assert parts["graft"] == ("decoder.graft", "decoder.cnn4_block.cmgm")
    assert parts["graft.r4-s1"] == ("decoder.cnn4_block.cmgm",)
    assert {"swin", "resnet", "decoder", "heads", "graft.r5-s2"} <= set(parts)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.init_from=/nonexistent/pgnet_dh.pth"], "train.init_from: /nonexistent/pgnet_dh.pth does not exist"),
        (["train.init_from=NOT_A_CHECKPOINT"], "text.pth: not a PyTorch file (neither a zip archive nor a pickle)"),
        (["train.init_from=NOT_A_STATE_DICT"],
         "train.init_from: NOT_A_STATE_DICT: neither a pgnet checkpoint nor an official PGNet state dict"),
        (["train.init_from=NO_EMA", "train.init_weights=ema"],
         "train.init_weights: checkpoint NO_EMA: no 'ema' weights (it has: model)"),
        (["train.freeze=[swim]"], "'swim' matches no part of the model; valid names: swin, resnet, decoder, graft, "
                                  "graft.r5-s2, heads"),
        (["train.freeze=[swin, resnet, decoder, heads]"], "leaves no parameter to train"),
        (["train.init_from=TINY", "model.width=32"], "TINY (model weights) does not fit the model: wrong shapes: "
                                                     "decoder.swin4_block.reduce.0.weight (file (64, 384, 1, 1), "
                                                     "model (32, 384, 1, 1))"),
    ],
)
def test_errors_come_before_the_run_folder(tmp_path, init_files, extra, message):
    names = init_files
    overrides = [next((o.replace(k, str(v)) for k, v in names.items() if k in o), o) for o in extra]
    message = next((message.replace(k, str(v)) for k, v in names.items() if k in message), message)
    config = tiny_config(*overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        Trainer(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_settings_the_command_line_sets_win_and_a_mismatch_names_the_fix(tiny_checkpoint, tmp_path, capsys):
    """The checkpoint's settings are adopted except those set; a set one that changes shapes is an error
    naming each differing setting and the overrides that give the checkpoint's."""
    from pgnet.cli import train

    data = ["data.train=[{name: synthetic, n: 2, size: 64}]", "data.val=[]", "train.device=cpu"]
    status = train.main(["--config", str(REPO / "configs" / "finetune.yaml"), "--init-from", str(tiny_checkpoint),
                         "--run-dir", str(tmp_path / "run"), "model.width=32", "model.swin_input_size=96", *data])
    err = capsys.readouterr().err
    assert status == 2 and not (tmp_path / "run").exists()
    assert f"model settings from {tiny_checkpoint}: swin=swin_tiny_patch4_window7_224, drop_path_rate=0.2" in err
    assert ("model settings of the config or the command line, not the checkpoint's: swin_input_size=96 "
            "(checkpoint: 64), width=32 (checkpoint: 64)") in err
    assert "does not fit the model: wrong shapes" in err
    assert "trained with other model settings (swin_input_size: 64 -> 96; width: 64 -> 32)" in err
    assert "or set model.swin_input_size=64 model.width=64" in err


def test_init_from_and_resume_exclude_each_other(capsys):
    from pgnet.cli import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", "runs/x", "--init-from", "pgnet_dh.pth"])
    assert exit_info.value.code == 2
    assert "--init-from starts a new run" in capsys.readouterr().err


def test_split_is_disjoint_deterministic_and_the_same_with_0_or_2_workers(tmp_path):
    root = make_folder(tmp_path / "mine", count=20, size=(40, 48))
    transform = build_eval_transform(32)

    def names(split, **options):
        entry = {"name": "generic", "root": str(root), "split": split, "val_fraction": 0.25, **options}
        return [image.stem for image, _ in build_dataset(entry, transform).pairs]

    train, val = names("train"), names("val")
    assert len(val) == 5 and len(train) == 15
    assert not set(train) & set(val) and sorted(train + val) == [f"s{i:02d}" for i in range(20)]
    assert (names("train"), names("val")) == (train, val)
    assert names("val", split_seed=1) != val

    dataset = build_train_dataset([{"name": "generic", "root": str(root), "split": "train", "val_fraction": 0.25}],
                                  build_train_transform(size=32))
    seen = {}
    for workers in (0, 2):
        loader = build_train_loader(dataset, batch_size=4, num_workers=workers, sizes=[32], drop_last=False)
        set_loader_epoch(loader, 0)
        seen[workers] = [name for batch in loader for name in batch["name"]]
    assert seen[0] == seen[2] and sorted(seen[0]) == sorted(train)

    other_val = build_dataset({"name": "generic", "root": str(root), "split": "val", "split_seed": 1}, transform)
    with pytest.raises(ValueError, match=r"pictures are also in data\.train"):
        check_held_out(dataset, [("generic", other_val)])
    check_held_out(dataset, [("generic", build_dataset(
        {"name": "generic", "root": str(root), "split": "val", "val_fraction": 0.25}, transform))])


def test_split_leaving_no_training_picture_is_an_error(tmp_path):
    root = make_folder(tmp_path / "two", count=2)
    with pytest.raises(SplitError, match="leaving no training picture"):
        build_dataset({"name": "generic", "root": str(root), "split": "train", "val_fraction": 0.8})
    with pytest.raises(SplitError, match="val_fraction must be between 0 and 1"):
        build_dataset({"name": "generic", "root": str(root), "split": "val", "val_fraction": 1.0})


def test_resumed_fine_tuning_run_ends_with_the_uninterrupted_weights(tiny_checkpoint, tmp_path):
    init = tmp_path / "pgnet_dh.pth"
    init.write_bytes(tiny_checkpoint.read_bytes())
    extra = [f"train.init_from={init}", "train.freeze=[swin]", "model.graft_points=[r5-s2, r4-s1]",
             "train.keep_recent=0"]
    straight = Trainer(tiny_config(*extra), tmp_path / "straight")
    straight.fit()

    interrupted = Trainer(tiny_config(*extra), tmp_path / "interrupted", callbacks=[StopAfter(3)])
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    assert load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pth")["position"]["global_step"] == 3
    init.unlink()  # resuming reads the run's own checkpoint, never init_from
    resumed = Trainer(load_config(tmp_path / "interrupted" / "config.yaml"), tmp_path / "interrupted", resume=True)
    resumed.fit()
    assert "not read: the run continues from its own checkpoint" in (tmp_path / "interrupted" / "log.txt").read_text()
    expected = straight.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_accounting_groups_repeated_blocks():
    target = {f"blocks.{i}.{p}": torch.zeros(1) for i in range(3) for p in ("w", "b")}
    report = account_weights(target, {"blocks.0.w": torch.zeros(1), "blocks.0.b": torch.zeros(1),
                                      "extra.1.w": torch.zeros(1), "extra.2.w": torch.zeros(1)})
    assert report.new_groups == [("blocks.*", 4)]
    assert report.unused_groups == [("extra", 2)]


# The README's models are Swin-B at 1024: the same commands run here on a tiny model at 64 (the model
# settings come from the tiny starting checkpoint).
README_TINY_TRAIN = [
    "data.size=64", "data.multiscale=[64]", "data.eval_size=64", "data.batch_size=2", "data.num_workers=0",
    "train.epochs=1", "train.max_steps_per_epoch=2", "train.image_every=0", "train.device=cpu",
]
README_TINY_PREDICT = ["--size", "64", "--device", "cpu", "--no-progress", "--workers", "1"]


def readme_commands(section: str) -> list[list[str]]:
    """The commands of the first ``bash`` block of a README section, split like a shell would."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = body.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_fine_tuning_commands_run(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """The README's commands as written, from a folder holding only the pictures: the weights command
    fetches the starting checkpoint from a server on 127.0.0.1 (a tiny stand-in for the released file,
    whose URL and SHA-256 a registry file gives), then fine-tuning adopts its model settings."""
    import hashlib
    import json

    from helpers import script, serve_folder

    from pgnet.cli import predict, train, weights
    from pgnet.models.hub import REGISTRY_ENV

    commands = readme_commands("Fine-tune on your own pictures")
    assert [c[:2] for c in commands] == [["pgnet-weights", "get"], ["python", "datasets/verify.py"],
                                         ["pgnet-train", "--config"], ["pgnet-predict", "new_pictures/"]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    make_folder(tmp_path / "my_pictures", count=10, size=(56, 72))
    make_folder(tmp_path / "new", count=2, size=(60, 80), seed=5)
    (tmp_path / "new" / "image").rename(tmp_path / "new_pictures")
    served = tmp_path.parent / f"{tmp_path.name}-served"
    served.mkdir()
    (served / "PGNet_DUT+HR.pth").write_bytes(tiny_checkpoint.read_bytes())
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()

    with serve_folder(served) as (base, _):
        registry = served / "registry.json"
        registry.write_text(json.dumps({"PGNet_DUT+HR.pth": {"url": f"{base}/PGNet_DUT%2BHR.pth", "sha256": digest}}))
        monkeypatch.setenv(REGISTRY_ENV, str(registry))
        assert weights.main([*commands[0][1:], "--no-progress"]) == 0
    assert "wrote PGNet_DUT+HR.pth (" in capsys.readouterr().out
    assert script("verify")["main"](commands[1][2:]) == 0
    assert train.main([*commands[2][1:], *README_TINY_TRAIN]) == 0
    assert ("model settings from PGNet_DUT+HR.pth: swin=swin_tiny_patch4_window7_224, swin_input_size=64, "
            "drop_path_rate=0.2") in capsys.readouterr().err
    assert load_config(tmp_path / "runs" / "mine" / "config.yaml").model.swin_input_size == 64  # what it adopted
    log = (tmp_path / "runs" / "mine" / "log.txt").read_text()
    assert "weights from PGNet_DUT+HR.pth (model weights):" in log and "9 train samples" in log
    assert "epoch 1 generic:" in log  # validated on the held-out picture
    assert predict.main([*commands[3][1:], *README_TINY_PREDICT]) == 0
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["s00.png", "s01.png"]
    assert "wrote 2 mask pictures" in capsys.readouterr().out
