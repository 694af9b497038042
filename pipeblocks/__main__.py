"""``python -m pipeblocks``: the same as the ``pipeblocks`` command."""

import sys

from pipeblocks.cli.main import main

sys.exit(main())
