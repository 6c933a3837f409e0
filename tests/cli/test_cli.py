"""pgnet.cli.common: the error-to-exit mapping every command shares, and each command's --help."""

import errno
import importlib
import signal

import pytest

from pgnet.cli.common import EXIT_STATUS_HELP, NothingDoneError, build_command_parser, errors_as, run_command
from pgnet.data.registry import get_layout
from pgnet.errors import UnknownNameError, UserError
from pgnet.writing import NoSpaceError

COMMANDS = ("train", "predict", "eval", "export", "convert")


def raising(error: BaseException):
    def body():
        raise error

    return body


def test_statuses_returned_by_the_body():
    assert run_command("pgnet-x", lambda: None) == 0
    assert run_command("pgnet-x", lambda: 1) == 1


@pytest.mark.parametrize(("error", "status", "message"), [
    (UserError("bad value 3 for --x"), 2, "bad value 3 for --x"),
    (ValueError("bad value"), 2, "bad value"),
    (FileNotFoundError("model.pth does not exist"), 2, "model.pth does not exist"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.pth"), 2, "a.pth: No such file or directory"),
    (PermissionError(errno.EACCES, "Permission denied", "out"), 2, "out: Permission denied"),
    (KeyError("unknown key 'x'"), 2, "unknown key 'x'"),
    (UnknownNameError("unknown dataset 'NOPE'"), 2, "unknown dataset 'NOPE'"),
    (OSError(errno.EIO, "Input/output error", "a.png"), 1, "a.png: Input/output error"),
    (NothingDoneError("no pictures found in x/"), 1, "no pictures found in x/"),
    (NoSpaceError("out/a.png"), 1, "no space left on device while writing out/a.png"),
])
def test_errors_become_one_line_and_a_status(error, status, message, capsys):
    assert run_command("pgnet-x", raising(error)) == status
    assert capsys.readouterr().err == f"error: {message}\n"


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
