"""Root conftest: import the package once, so doctests collected from module files (pytest's
importlib mode) share the same module objects as the tests. Without OR-Tools (the 'solver'
extra) the exact solver's doctests are not collected; its tests skip with that reason."""

import importlib.util

import pipeblocks  # noqa: F401

collect_ignore = [] if importlib.util.find_spec("ortools") else [
    "pipeblocks/search/exact.py", "pipeblocks/search/optimum.py"]
