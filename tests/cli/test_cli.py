"""pgnet.cli.common: the error-to-exit mapping every command shares, and each command's --help."""

import errno
import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pgnet.cli.common import EXIT_STATUS_HELP, NothingDoneError, build_command_parser, errors_as, run_command
from pgnet.data.registry import get_layout
from pgnet.errors import UnknownNameError, UserError
from pgnet.writing import NoSpaceError

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("train", "predict", "eval", "export", "convert")
DATASET_COMMANDS = ("verify_dataset", "cache_dataset", "make_synthetic")
ALL_COMMANDS = (*COMMANDS, "benchmark", "serve", "calibrate", "weights", *DATASET_COMMANDS)


def raising(error: BaseException):
    def body():
        raise error

    return body


def test_statuses_returned_by_the_body():
    assert run_command("pgnet-x", lambda: None) == 0
    assert run_command("pgnet-x", lambda: 1) == 1


@pytest.mark.parametrize(("error", "status", "message"), [
    (UserError("bad value 3 for --x"), 2, "bad value 3 for --x"),
    (UnknownNameError("unknown dataset 'NOPE'"), 2, "unknown dataset 'NOPE'"),
    (NothingDoneError("no pictures found in x/"), 1, "no pictures found in x/"),
    (NoSpaceError("out/a.png"), 1, "no space left on device while writing out/a.png"),
])
def test_user_errors_become_one_line_and_a_status(error, status, message, capsys):
    assert run_command("pgnet-x", raising(error)) == status
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize(("error", "message"), [
    (FileNotFoundError("model.pth does not exist"), "model.pth does not exist"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.pth"), "a.pth: No such file or directory"),
    (PermissionError(errno.EACCES, "Permission denied", "out"), "out: Permission denied"),
    (KeyError("unknown key 'x'"), "unknown key 'x'"),
])
def test_errors_converted_on_purpose_become_one_line(error, message, capsys):
    def body():
        with errors_as(UserError, type(error)):
            raise error

    assert run_command("pgnet-x", body) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("error", [
    ValueError("bad value"),
    KeyError("missing_key"),
    FileNotFoundError(errno.ENOENT, "No such file or directory", "a.pth"),
    OSError(errno.EIO, "Input/output error", "a.png"),
])
def test_other_errors_are_bugs_and_keep_their_traceback(error, capsys):
    with pytest.raises(type(error)):
        run_command("pgnet-x", raising(error))
    assert capsys.readouterr().err == ""


def test_an_exit_status_attribute_is_honoured(capsys):
    class StoppedError(RuntimeError):
        exit_status = 3

    assert run_command("pgnet-x", raising(StoppedError("non-finite loss at step 4"))) == 3
    assert capsys.readouterr().err == "error: non-finite loss at step 4\n"


def test_interruptions(capsys):
    class Interrupted(KeyboardInterrupt):  # as pgnet.train.trainer.TrainingInterrupted: it logged its own line
        exit_status = 128 + signal.SIGTERM

    assert run_command("pgnet-x", raising(Interrupted("SIGTERM"))) == 143
    assert capsys.readouterr().err == ""
    assert run_command("pgnet-x", raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "pgnet-x: interrupted\n"


def test_bugs_keep_their_traceback():
    with pytest.raises(TypeError):
        run_command("pgnet-x", raising(TypeError("unsupported operand")))
    with pytest.raises(RuntimeError):
        run_command("pgnet-x", raising(RuntimeError("CUDA error")))


def test_errors_as_keeps_the_message_and_the_cause(capsys):
    def body():
        with errors_as(NothingDoneError, RuntimeError):
            raise RuntimeError("disk on fire")

    assert run_command("pgnet-x", body) == 1
    assert capsys.readouterr().err == "error: disk on fire\n"
    with pytest.raises(UserError, match=r"^unknown key$") as caught, errors_as(UserError, KeyError):
        raise KeyError("unknown key")
    assert isinstance(caught.value.__cause__, KeyError)


def test_unknown_names_are_user_errors_and_key_errors_with_plain_messages():
    with pytest.raises(UserError) as caught:
        get_layout("NOPE-SET")
    assert isinstance(caught.value, KeyError) and str(caught.value).startswith("unknown dataset 'NOPE-SET';")


def test_command_parser_epilog():
    help_text = build_command_parser("pgnet-x", "Does x.", "Example: pgnet-x a b").format_help()
    assert "Example: pgnet-x a b\n\nexit status: 0 done;" in help_text


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_documents_its_exit_statuses(name):
    module = importlib.import_module(f"pgnet.cli.{name}")
    help_text = " ".join(module.build_parser().format_help().split())
    assert "exit status: 0" in help_text and "2 usage error" in help_text
    assert "1 " in help_text.split("exit status:", 1)[1]
    if name == "train":
        assert "3 stopped by non-finite losses" in help_text and "128+N stopped by signal N" in help_text
    if name in ("train", "eval", "export", "convert"):
        assert " ".join(EXIT_STATUS_HELP.split()) in help_text


def test_usage_errors_exit_2_without_a_traceback(tmp_path, capsys):
    from pgnet.cli import convert, eval, export, predict, train

    missing = str(tmp_path / "missing.pth")
    calls = [
        (convert.main, [missing, str(tmp_path / "out.pth")], "missing.pth"),
        (export.main, [missing, str(tmp_path / "out.onnx")], "missing.pth"),
        (train.main, ["--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (predict.main, [str(tmp_path / "nothing-here"), "-c", missing, "-o", str(tmp_path / "o")], "nothing-here"),
        (eval.main, ["--preds", "no-equals-sign", "--gt", f"d={tmp_path}"], "--preds expects NAME=PATH"),
    ]
    for main, argv, named in calls:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err and "Traceback" not in err


def test_argument_errors_exit_2_from_the_parser(capsys):
    from pgnet.cli import train

    with pytest.raises(SystemExit) as caught:
        train.main(["--config", "a.yaml", "--resume", "runs/x"])
    assert caught.value.code == 2 and "give either --config CONFIG or --resume RUN_DIR" in capsys.readouterr().err


@pytest.mark.parametrize("name", DATASET_COMMANDS)
def test_dataset_commands_document_their_exit_statuses(name):
    module = importlib.import_module(f"pgnet.cli.{name}")
    help_text = " ".join(module.build_parser().format_help().split())
    assert f"usage: {module.PROG} " in help_text and "Example: python datasets/" in help_text
    statuses = help_text.split("exit status:", 1)[1]
    assert statuses.startswith(" 0 ") and " 1 " in statuses and " 2 " in statuses


def test_help_of_every_command_does_not_import_torch():
    code = ("import sys, importlib\n"
            f"for name in {ALL_COMMANDS!r}:\n"
            "    try:\n        importlib.import_module('pgnet.cli.' + name).main(['--help'])\n"
            "    except SystemExit as stop:\n        assert stop.code == 0, name\n"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "False False", result.stderr[-2000:]
    for name in DATASET_COMMANDS:
        assert f"usage: {importlib.import_module(f'pgnet.cli.{name}').PROG} " in result.stdout


def test_a_library_bug_in_a_command_shows_its_traceback_and_exits_1(tmp_path):
    code = ("import sys\nimport pgnet.data.registry\n"
            "def find_datasets(*args):\n    raise KeyError('missing_key')\n"
            "pgnet.data.registry.find_datasets = find_datasets\n"
            "from pgnet.cli.verify_dataset import main\n"
            f"sys.exit(main([{str(tmp_path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'missing_key'" in result.stderr
    assert "error: missing_key" not in result.stderr


def test_a_user_error_in_a_command_is_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    import pgnet.data.registry
    from pgnet.cli.verify_dataset import main

    def find_datasets(root, names):
        raise error

    monkeypatch.setattr(pgnet.data.registry, "find_datasets", find_datasets)
    error = UserError(f"{tmp_path}: not a dataset")
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: not a dataset\n"
    error = KeyError("missing_key")
    with pytest.raises(KeyError, match="missing_key"):
        main([str(tmp_path)])
    assert capsys.readouterr().err == ""


def test_bad_input_met_in_the_library_is_a_usage_error(tmp_path, capsys):
    from pgnet.cli import cache_dataset, eval, make_synthetic, predict, train

    (tmp_path / "preds").mkdir()
    preds, missing = f"m={tmp_path / 'preds'}", tmp_path / "missing"
    output = ["-o", str(tmp_path / "out")]
    calls = [
        (eval.main, ["--preds", preds, "--gt", f"d={missing}", "--metrics", "bogus", *output], "unknown metric"),
        (eval.main, ["--preds", preds, "--gt", f"d={missing}", *output], f"mask folder {missing} does not exist"),
        (eval.main, ["--pred-root", str(missing), "--gt", f"d={missing}", *output], f"--pred-root {missing}"),
        (eval.main, ["--preds", preds, "--config", str(missing / "c.yaml"), *output], "c.yaml"),
        (predict.main, [str(tmp_path), "-c", "x.pth", "--color", "nonsense", *output], "invalid colour 'nonsense'"),
        (predict.main, [str(tmp_path), "-c", "x.pth", "--mode", "blur", "--blur", "0", *output], "blur must be"),
        (train.main, ["--resume", str(tmp_path)], f"{tmp_path} is not a run folder"),
        (make_synthetic.main, [str(tmp_path / "synthetic"), "--n", "1", "--size", "4"], "synthetic size"),
        (cache_dataset.main, [str(missing)], "missing"),
    ]
    for main, argv, named in calls:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err and "Traceback" not in err, (argv, err)


@pytest.mark.parametrize("command", ["export", "convert"])
def test_no_command_writes_over_its_checkpoint_or_an_existing_file_unless_asked(command, tmp_path, capsys):
    main = importlib.import_module(f"pgnet.cli.{command}").main
    checkpoint = tmp_path / "ckpt.pth"
    checkpoint.write_bytes(b"the checkpoint")
    assert main([str(checkpoint), str(checkpoint)]) == 2
    assert f"is the input {checkpoint}: writing it would destroy the input" in capsys.readouterr().err
    assert main([str(checkpoint), str(tmp_path / "." / "ckpt.pth"), "--overwrite"]) == 2  # never, even if asked
    capsys.readouterr()
    existing = tmp_path / "older.out"
    existing.write_bytes(b"another command's file")
    assert main([str(checkpoint), str(existing)]) == 2
    assert f"{existing} exists: pass --overwrite to replace it" in capsys.readouterr().err
    assert checkpoint.read_bytes() == b"the checkpoint" and existing.read_bytes() == b"another command's file"


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_an_output_folder_naming_an_existing_file_is_a_usage_error_before_any_work(command, tmp_path, capsys):
    main = importlib.import_module(f"pgnet.cli.{command}").main
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "masks.png").write_bytes(b"an earlier output")
    inputs = [str(tmp_path / "a.png")] if command == "predict" else ["--preds", str(tmp_path), "--gt", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:  # the parser's error: before any input is listed or model loaded
        main([*inputs, "-o", str(tmp_path / "masks.png"), "-c", str(tmp_path / "none.pth")])
    assert exited.value.code == 2
    assert f"-o/--output names the file {tmp_path / 'masks.png'}: it takes a folder" in capsys.readouterr().err
    assert (tmp_path / "masks.png").read_bytes() == b"an earlier output"
