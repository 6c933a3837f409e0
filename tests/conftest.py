"""Settings and fixtures shared by the whole test run.

Inference precision ``auto`` stays float32 on this machine's CPU (``PGNET_CPU_BF16=0`` unless set): the
tests' tolerances are float32's, and the bfloat16 tests ask for bfloat16 (or force the detection).

One torch thread (unless OMP_NUM_THREADS says otherwise): the tests run tiny models, where a second
thread buys next to nothing, and on a shared 2-core machine two threads stall each other's parallel
regions (the suite took several times longer). Subprocesses inherit the setting.

Session fixtures, built once and only when a test asks for them:
- ``tiny_run``: one tiny training run (2 optimiser steps at 64 px, with EMA weights); its
  ``tiny_trained_checkpoint`` (model, EMA, optimiser, RNG: what the trainer writes) and
  ``tiny_checkpoint`` (the same trained network as a model-only checkpoint, as ``model_checkpoint``
  writes it) serve every test that needs a small checkpoint;
- ``official_state``: the official PGNet weights rebuilt from the reference manifest (read only);
- ``official_model``: the default PGNet (its recomputed buffers are what conversions compare);
- ``serve_package``/``serve_predictor``: a tiny random network as a model package (64 px), and its predictor.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported
os.environ.setdefault("PGNET_CPU_BF16", "0")  # pgnet.device.CPU_BF16_VARIABLE; subprocesses inherit it

from pathlib import Path

import pytest
import torch
from official_weights import official_pgnet_state_dict

import pgnet._compat  # noqa: F401  (before anything imports torchvision or timm)
from pgnet.checkpoint import load_checkpoint, save_checkpoint
from pgnet.config import load_config
from pgnet.models import PGNet
from pgnet.train.trainer import Trainer

if os.environ["OMP_NUM_THREADS"].isdigit():  # also where a plugin imported torch first
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]

# The tiny network of the shared checkpoint (the trainer tests' TINY model): Swin-T at 64 px, ResNet-18.
TINY_MODEL = {"swin": "swin_tiny_patch4_window7_224", "resnet": "resnet18", "swin_input_size": 64}
TINY_RUN = [
    "name=shared_tiny",
    *(f"model.{key}={value}" for key, value in TINY_MODEL.items()),
    "model.drop_path_rate=0.2",
    "data.train=[{name: synthetic, n: 4, size: 64, seed: 0}]",
    "data.val=[]",
    "data.size=64",
    "data.multiscale=[64]",
    "data.eval_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "optim.name=adamw",
    "optim.lr=0.001",
    "train.epochs=1",
    "train.ema_decay=0.5",
    "train.image_every=0",
    "train.log_every=0",
    "train.keep_recent=0",
]
MODEL_ONLY = ("format", "version", "model_config", "model", "preprocessing")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run folder of one tiny training (2 optimiser steps on 4 synthetic pictures, EMA kept)."""
    run_dir = tmp_path_factory.mktemp("shared") / "tiny_run"
    Trainer(load_config(REPO / "configs" / "demo.yaml", TINY_RUN), run_dir).fit()
    return run_dir


@pytest.fixture(scope="session")
def tiny_trained_checkpoint(tiny_run) -> Path:
    """The tiny run's ``last.pth``: model and EMA weights, optimiser, position and RNG state."""
    return tiny_run / "checkpoints" / "last.pth"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_trained_checkpoint, tmp_path_factory) -> Path:
    """The tiny run's trained network as a model-only checkpoint (config, weights, preprocessing)."""
    state = load_checkpoint(tiny_trained_checkpoint)
    path = tmp_path_factory.mktemp("shared") / "tiny.pth"
    return save_checkpoint({key: state[key] for key in MODEL_ONLY}, path)


@pytest.fixture(scope="session")
def official_state() -> dict[str, torch.Tensor]:
    """Every key of a released official checkpoint (``module.`` prefix); shared: copy before editing."""
    return official_pgnet_state_dict()


@pytest.fixture(scope="session")
def official_model() -> PGNet:
    """The default (official) PGNet in eval mode; shared: never train or modify it."""
    return PGNet().eval()


@pytest.fixture
def default_threads():
    """The machine's thread count for one test (torch's default without OMP_NUM_THREADS)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    yield
    torch.set_num_threads(threads)


# `make test` hands whole files to three xdist workers (one thread each; on 2 cores a third worker fills
# the time the others spend waiting on subprocesses and compilers; docs/performance.md has the figures)
# in collection order: the files that take longest go first, so that the workers finish together.
# Tests keep their order in a file.
SLOW_FILES_FIRST = ("test_acceleration.py", "test_trainer.py", "test_export.py", "test_run_integrity.py",
                    "test_benchmark.py", "test_official_training.py", "test_grafting.py", "test_finetune.py",
                    "test_distributed_commands.py", "test_video.py", "test_checkpoint.py", "test_app.py",
                    "test_official.py", "test_model_package.py", "test_callbacks.py", "test_architecture.py",
                    "test_evaluator.py", "test_predictor.py", "test_serve_command.py")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def serve_package(tmp_path_factory) -> Path:
    """A model package of a tiny random network (test size 64), for the serving tests."""
    from pgnet.checkpoint import model_checkpoint
    from pgnet.data.preprocessing import Preprocessing
    from pgnet.models.pgnet import ModelConfig
    from pgnet.predict.export import export_package

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve")
    network = PGNet(ModelConfig(**TINY_MODEL))
    checkpoint = save_checkpoint(model_checkpoint(network, Preprocessing(eval_size=64)), folder / "tiny.pth")
    return export_package(checkpoint, folder / "package")


@pytest.fixture(scope="session")
def serve_predictor(serve_package):
    """The package's predictor on the CPU (shared: the tests only predict with it)."""
    from pgnet.predict.predictor import Predictor

    return Predictor.from_pretrained(serve_package, "cpu", batch_size=16)
