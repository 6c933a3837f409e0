"""The known weights files and their download: from 127.0.0.1 and file:// only (nothing from outside),
resumed with Range requests, hash-checked before the rename; the loaders refuse a known name with
other contents; ``pgnet-weights`` lists, fetches, or says what to fetch by hand."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers import serve_folder

from pgnet.cli.weights import main as weights_main
from pgnet.config import load_config
from pgnet.models.backbones import ResNetBranch, load_pretrained
from pgnet.models.hub import REGISTRY_ENV, DownloadError, KnownFile, download, known_files, sha256_of
from pgnet.models.weights import CheckpointError

PAYLOAD = bytes(range(256)) * 400  # 100 kB


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, Range headers received, the served folder) of a server holding ``blob.bin``."""
    folder = tmp_path_factory.mktemp("served")
    (folder / "blob.bin").write_bytes(PAYLOAD)
    with serve_folder(folder) as (base, ranges):
        yield base, ranges, folder


def entry(sha256=None, prefix=None):
    return KnownFile("blob.bin", "a test file", "http://127.0.0.1/", "blob.bin", sha256=sha256, sha256_prefix=prefix)


def test_download_is_checked_then_renamed_into_place(served, tmp_path):
    base, _, _ = served
    seen = []
    path = download(f"{base}/blob.bin", tmp_path / "out" / "blob.bin", entry(hashlib.sha256(PAYLOAD).hexdigest()),
                    progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == PAYLOAD and sorted(p.name for p in path.parent.iterdir()) == ["blob.bin"]
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_an_interrupted_download_continues_with_a_range_request(served, tmp_path):
    base, ranges, _ = served
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:1000])
    path = download(f"{base}/blob.bin", tmp_path / "blob.bin", entry(prefix=hashlib.sha256(PAYLOAD).hexdigest()[:8]))
    assert path.read_bytes() == PAYLOAD and ranges[-1] == "bytes=1000-"
    assert not (tmp_path / "blob.bin.part").exists()


def test_a_wrong_hash_leaves_nothing_and_says_what_to_fetch(served, tmp_path):
    base, _, _ = served
    with pytest.raises(DownloadError, match=r"not the expected one \(SHA-256 [0-9a-f]{64}, expected 0000") as raised:
        download(f"{base}/blob.bin", tmp_path / "blob.bin", entry("0" * 64))
    assert "save it as" in str(raised.value) and list(tmp_path.iterdir()) == []


def test_file_urls_and_an_unreachable_server(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    assert download(source.as_uri(), tmp_path / "copy.bin").read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match=r"download blob.bin from http://127.0.0.1:9/blob.bin .*save it as"):
        download("http://127.0.0.1:9/blob.bin", tmp_path / "blob.bin",
                 KnownFile("blob.bin", "x", "page", "blob.bin", url="http://127.0.0.1:9/blob.bin"), timeout=5)


def test_known_files_name_their_sources_and_no_invented_hash():
    files = known_files()
    assert list(files) == ["PGNet_DUT+HR.pth", "swin_base_patch4_window7_224_22k.pth", "resnet18-5c106cde.pth"]
    assert files["PGNet_DUT+HR.pth"].url is None and "github.com/iCVTEAM/PGNet" in files["PGNet_DUT+HR.pth"].page
    assert files["resnet18-5c106cde.pth"].url == "https://download.pytorch.org/models/resnet18-5c106cde.pth"
    assert files["resnet18-5c106cde.pth"].sha256_prefix == "5c106cde"
    assert files["swin_base_patch4_window7_224_22k.pth"].url.startswith(
        "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/")
    assert all(f.sha256 is None for f in files.values())  # none published for certain: none written here


def test_a_known_name_with_other_contents_is_refused_by_the_loader(tmp_path):
    import torchvision

    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    assert not sha256_of(path).startswith("5c106cde")
    with pytest.raises(CheckpointError, match=r"model.resnet_pretrained: .*resnet18-5c106cde.pth: not the released "
                                              r"resnet18-5c106cde.pth \(SHA-256 .* expected starts with 5c106cde"):
        load_pretrained(ResNetBranch("resnet18"), path, "model.resnet_pretrained")


def test_the_command_lists_fetches_checks_and_says_what_to_fetch_by_hand(served, tmp_path, monkeypatch, capsys):
    base, _, folder = served
    monkeypatch.chdir(tmp_path)
    assert weights_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "resnet18-5c106cde.pth" in out and "put at: pretrained/resnet18-5c106cde.pth" in out
    assert "SHA-256: unknown (none published)" in out and "SHA-256: starts with 5c106cde" in out

    assert weights_main(["get", "PGNet_DUT+HR.pth"]) == 1  # no direct link: what to do, and where
    err = capsys.readouterr().err
    assert "download PGNet_DUT+HR.pth from https://drive.google.com/" in err and "save it as PGNet_DUT+HR.pth" in err

    registry = tmp_path / "registry.json"
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    registry.write_text(json.dumps({"resnet18-5c106cde.pth": {"url": f"{base}/blob.bin", "sha256": digest}}))
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    assert weights_main(["get", "resnet18-5c106cde.pth", "--no-progress"]) == 0
    assert (tmp_path / "pretrained" / "resnet18-5c106cde.pth").read_bytes() == PAYLOAD
    assert f"SHA-256 {digest}, as published" in capsys.readouterr().out
    assert weights_main(["get", "resnet18-5c106cde.pth"]) == 0  # checked, not fetched again
    assert "already there (SHA-256 as published)" in capsys.readouterr().out
    assert weights_main(["get", f"{base}/blob.bin", "--to", "elsewhere", "--no-progress"]) == 0  # any URL
    assert weights_main(["--sha256", str(folder / "blob.bin")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{digest}  {folder / 'blob.bin'}"
    assert weights_main(["get", "nothing.pth"]) == 2
    assert "unknown weights file 'nothing.pth'" in capsys.readouterr().err


def test_the_readme_backbone_command_fetches_both_into_pretrained(tmp_path, monkeypatch, capsys):
    """The README's command as written, against tiny stand-ins served from 127.0.0.1 (a registry file
    gives their URLs and hashes); the files land where the official recipe's config names them."""
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("### Pretrained backbones", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    (command,) = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert command[:2] == ["pgnet-weights", "get"]
    served = tmp_path / "served"
    served.mkdir()
    stand_ins = {"swin_base_patch4_window7_224_22k.pth": b"swin" * 100, "resnet18-5c106cde.pth": b"resnet" * 100}
    registry = {}
    with serve_folder(served) as (base, _):
        for name, data in stand_ins.items():
            (served / name).write_bytes(data)
            registry[name] = {"url": f"{base}/{name}", "sha256": hashlib.sha256(data).hexdigest()}
        (tmp_path / "registry.json").write_text(json.dumps(registry))
        monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "registry.json"))
        monkeypatch.chdir(tmp_path)
        assert weights_main([*command[1:], "--no-progress"]) == 0
    for name, data in stand_ins.items():
        assert (tmp_path / "pretrained" / name).read_bytes() == data
    model = load_config(Path(__file__).resolve().parents[2] / "configs" / "_base_" / "official.yaml").model
    assert {model.swin_pretrained, model.resnet_pretrained} == {f"pretrained/{name}" for name in stand_ins}


def test_convert_and_the_checkpoint_loaders_check_a_known_hash(tmp_path, monkeypatch, capsys):
    from pgnet.cli.convert import main as convert_main

    path = tmp_path / "PGNet_DUT+HR.pth"
    path.write_bytes(PAYLOAD)
    (tmp_path / "registry.json").write_text(json.dumps({"PGNet_DUT+HR.pth": {"sha256": "0" * 64}}))
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "registry.json"))
    assert convert_main([str(path), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {path}: not the released PGNet_DUT+HR.pth (SHA-256 {sha256_of(path)}, expected 0000" in err
    assert not (tmp_path / "out.pth").exists()
