"""Command-line front end (``pipeblocks`` and ``python -m pipeblocks``)."""
