"""Root conftest: import the package once, so doctests collected from module files (pytest's
importlib mode) share the same module objects as the tests."""

import pipeblocks  # noqa: F401
