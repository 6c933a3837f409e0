"""A command's ``--help`` and its argument errors load neither torch nor timm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_help_and_argument_errors_do_not_import_torch():
    code = ("import sys\nfrom pgnet.cli import predict, eval\n"
            "for main, argv in ((predict.main, ['--help']), (eval.main, ['--help']), (eval.main, ['--bogus'])):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip().splitlines()[-1] == "False False", result.stderr[-2000:]
