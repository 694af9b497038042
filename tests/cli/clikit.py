"""Running ``pipeblocks`` in-process for the CLI tests: exit code, stdout, stderr."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeblocks.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) as the console script runs it: (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own exits (usage errors, --help)
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict[str, Any]:
    """The JSON object on the last line of ``out`` (what ``--json`` prints)."""
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]
