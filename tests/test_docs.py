"""The README and docs/ say what the code does: their examples run.

Every ```python block runs in a fresh interpreter, and every ``$ pipeblocks ...`` line of a
```console block runs as a command (exit code 0, or non-zero when the next line shows an error).
A block right after a ``<!-- not-run: reason -->`` line is skipped (e.g. multi-process training,
which tests/runtime covers).
"""

from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- not-run:[^>]*-->\s*\n)?```(python|console)\n(.*?)```", re.S)
BIN = pathlib.Path(sys.executable).parent


def _blocks() -> list[tuple[str, str, str]]:
    out = []
    for page in PAGES:
        for i, m in enumerate(BLOCK.finditer(page.read_text())):
            if m.group(1):
                continue
            out.append((f"{page.name}#{i}", m.group(2), m.group(3)))
    return out


BLOCKS = _blocks()


def test_docs_have_examples() -> None:
    """The scan finds the examples (a broken pattern would silently test nothing)."""
    kinds = {kind for _, kind, _ in BLOCKS}
    assert kinds == {"python", "console"} and len(BLOCKS) >= 5


@pytest.mark.parametrize("where,kind,body", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_doc_example_runs(where: str, kind: str, body: str, tmp_path: pathlib.Path) -> None:
    """One documented example runs as shown."""
    if kind == "python":
        out = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, f"{where}:\n{body}\n{out.stderr}"
        return
    lines = body.splitlines()
    ran = 0  # commands that are not `pipeblocks` (python scripts, torchrun) are not run here
    for i, line in enumerate(lines):
        if not line.startswith("$ "):
            continue
        argv = shlex.split(line[2:].split(" #", 1)[0])
        if not argv or pathlib.Path(argv[0]).name != "pipeblocks":
            continue
        argv[0] = str(BIN / "pipeblocks")
        following = lines[i + 1] if i + 1 < len(lines) else ""
        expect_error = "error:" in following and not following.startswith("$")
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        if expect_error:
            assert out.returncode != 0, f"{where}: {line} should fail"
            assert following.strip() in out.stderr.strip(), f"{where}: {out.stderr}"
        else:
            assert out.returncode == 0, f"{where}: {line}\n{out.stderr}"
        ran += 1


def test_design_citations_name_real_sections() -> None:
    """Every ``docs/design.md, "Section"`` cited in the package names a heading of design.md."""
    headings = {line[3:].strip() for line in (ROOT / "docs" / "design.md").read_text().splitlines()
                if line.startswith("## ")}
    cite = re.compile(r'docs/design\.md,\s+("[^"]+"(?:\s+and\s+"[^"]+")*)')
    cited = {" ".join(name.split())
             for path in (ROOT / "pipeblocks").rglob("*.py")
             for m in cite.finditer(path.read_text())
             for name in re.findall(r'"([^"]+)"', m.group(1))}
    assert len(cited) >= 8 and cited <= headings, cited - headings
    assert "DESIGN.md" not in "".join(p.read_text() for p in (ROOT / "pipeblocks").rglob("*.py"))
