"""`live-pull` (the console script, and `python -m entrypoint`): the quick start first,
then the command line (cli.py), whose imports are most of the agent's start."""

from __future__ import annotations

import sys

from entrypoint.quickstart import end_untaken, quick_start


def main() -> int:
    quick_start(sys.argv[1:])  # `live-pull run` only: see quickstart.py
    try:
        from entrypoint.cli import main as command_line

        return command_line()
    finally:
        end_untaken()
