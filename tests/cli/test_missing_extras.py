"""Without an optional dependency a command says which extra to install: one line, exit 1.

Each case runs a real ``python`` process in which the dependency cannot be imported
(``sys.modules[name] = None``, what Python does for a module it must not find), then runs the
command as its entry point does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])

# The bootstrap: hide the modules, then run the console script or `python -m pipeblocks.train`.
_BOOT = """
import runpy, sys
hidden, entry, *argv = sys.argv[1:]
for name in filter(None, hidden.split(",")):
    sys.modules[name] = None
if entry == "cli":
    from pipeblocks.cli.main import main
    sys.exit(main(argv))
sys.argv = [entry, *argv]
runpy.run_module(entry, run_name="__main__", alter_sys=True)
"""


def _run(hidden: str, entry: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BOOT, hidden, entry, *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": _ROOT, "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(
    ("hidden", "entry", "argv", "extra"),
    [
        ("matplotlib", "cli", ["draw", "1f1b", "-p", "2", "-m", "2", "-o", "x.png"], "plot"),
        ("matplotlib", "cli", ["pareto", "-p", "2", "-m", "4", "-o", "x.png"], "plot"),
        ("torch", "cli", ["train", "--schedule", "1f1b", "--ranks", "2", "--microbatches", "2",
                          "--steps", "1"], "torch"),
        ("torch", "cli", ["profile", "--ranks", "2"], "torch"),
        ("torch", "pipeblocks.train", ["--schedule", "1f1b", "--microbatches", "2"], "torch"),
    ],
)
def test_a_missing_dependency_is_one_line_naming_the_extra(
    hidden: str, entry: str, argv: list[str], extra: str, tmp_path: Path
) -> None:
    """draw/pareto -o without matplotlib, train/profile/python -m pipeblocks.train without
    torch: exit 1, one stderr line with the pip command, nothing written."""
    r = _run(hidden, entry, *argv, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("pipeblocks: error: ")
    assert f"needs {hidden}, which is not installed; install it with pip install " \
           f"'pipeblocks[{extra}]'" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_pure_commands_need_neither(tmp_path: Path) -> None:
    """Without torch and matplotlib, list, show, export, simulate and pareto (no -o) work."""
    for argv in (["list"], ["show", "zb-v", "-p", "2", "-m", "4"],
                 ["export", "1f1b", "-p", "2", "-m", "2", "--format", "chrome-trace"],
                 ["simulate", "v-half", "-p", "2", "-m", "4"], ["pareto", "-p", "2", "-m", "4"]):
        r = _run("torch,matplotlib", "cli", *argv, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout and not r.stderr, (argv, r.stderr)


def test_the_library_names_the_extra_too(tmp_path: Path) -> None:
    """pipeblocks.visual without matplotlib raises MissingDependencyError (an ImportError)."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import pipeblocks as pb\n"
            "from pipeblocks.errors import MissingDependencyError\n"
            "from pipeblocks.visual.timeline import timeline_figure\n"
            "try:\n"
            "    timeline_figure(pb.simulate(pb.generate('1f1b', 2, 2)))\n"
            "except MissingDependencyError as e:\n"
            "    assert isinstance(e, ImportError) and e.extra == 'plot', e\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": _ROOT, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("drawing a picture needs matplotlib, which is not installed; install "
                        "it with pip install 'pipeblocks[plot]'\n")
