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

from pipeblocks.cli.common import die, one_line_errors
from pipeblocks.errors import FormatError, PipeblocksError, ScheduleError, SpecError

__all__ = ["main", "build_parser"]

_ORDER = ("list", "show", "export", "validate", "simulate", "compare", "search", "pareto", "plan",
          "draw", "train", "profile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeblocks",
        description="Design, check, simulate, draw, search and run pipeline-parallel schedules.",
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
        return int(args.func(args) or 0)
    except SpecError as e:
        return die(str(e), 2)
    except ScheduleError as e:
        return die(str(e), 1)
    except FormatError as e:
        return die(str(e), 1)
    except PipeblocksError as e:
        return die(str(e), 1)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return die("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
