"""The ``pipeblocks`` command: a thin front end over the public API.

Each module beside this one that defines ``register(subparsers)`` adds a subcommand; the
handler it sets with ``set_defaults(func=...)`` gets the parsed args and returns an exit code.

    $ pipeblocks list
    $ pipeblocks show v-half -p 4 -m 8
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from pipeblocks.checks import require
from pipeblocks.cli.common import die, one_line_errors
from pipeblocks.errors import PipeblocksError, SpecError

__all__ = ["main", "build_parser"]

# The optional dependency each command cannot start without (a missing one is exit 1 with the
# extra to install; `pareto -o` checks matplotlib itself, only when it draws).
_NEEDS = {"train": "torch", "profile": "torch", "draw": "matplotlib"}

_ORDER = ("list", "show", "export", "validate", "simulate", "compare", "search", "pareto", "plan",
          "draw", "train", "profile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeblocks",
        description="Design, check, simulate, draw, search and run pipeline-parallel schedules.",
        epilog="exit codes: 0 success; 1 failed (invalid input, a file that cannot be read or "
        "written, a missing optional dependency); 2 usage (a bad option or option value)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import pipeblocks.cli as pkg

    mods = [i.name for i in pkgutil.iter_modules(pkg.__path__) if i.name not in ("main", "common")]
    mods.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in mods:
        mod = importlib.import_module(f"pipeblocks.cli.{name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    for p in (parser, *sub.choices.values()):
        one_line_errors(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command in _NEEDS:
            require(_NEEDS[args.command], f"pipeblocks {args.command}")
        return int(args.func(args) or 0)
    except SpecError as e:  # bad arguments or option values: usage
        return die(str(e), 2)
    except PipeblocksError as e:  # invalid input, a file, a missing dependency: failed
        return die(str(e), 1)
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file the checks above could not foresee (permissions, a full disk)
        where = f"{e.filename}: " if e.filename else ""
        return die(f"{where}{e.strerror or e}", 1)
    except KeyboardInterrupt:
        return die("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
