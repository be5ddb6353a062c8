"""Runs one one-off command (an installer, the release step) for the agent, and ends it
and everything it started: when the command exits (its background and setsid'd
children too), and when the agent dies, even by SIGKILL.

The agent starts `python -m entrypoint.oneoff ARGV...` with a tag of this command's
own in LIVE_PULL_PROCESS and a parent-death signal (SIGTERM) for this wrapper; the
command and all its descendants inherit the tag, so the wrapper finds them in /proc
however they detached.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from entrypoint.processes import TAG_VARIABLE, end_tagged

GRACE_SECONDS = 2.0


class Terminated(Exception):
    """The agent died (parent-death signal) or asked this command to stop."""


def main(argv: list[str]) -> int:
    home, _, name = os.environ[TAG_VARIABLE].rpartition(":")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, on_term)
    try:
        if os.getppid() == 1:  # the agent died before the death signal was armed
            raise Terminated
        code = _run(argv)
    except Terminated:
        code = 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        end_tagged(home, [name], time.monotonic() + GRACE_SECONDS)
    return code


def _run(argv: list[str]) -> int:
    process = subprocess.Popen(argv)
    code = process.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
