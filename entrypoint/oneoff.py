"""Runs one one-off command (an installer, the release step) for the agent, and ends it
and everything it started: when the command exits (its background and setsid'd
children too), and when the agent dies, even by SIGKILL.

The agent starts `python -m entrypoint.oneoff ARGV...` with a tag of this command's
own in LIVE_PULL_PROCESS and a parent-death signal (SIGTERM) for this wrapper; the
command and all its descendants inherit the tag, so the wrapper finds them in /proc
however they detached.

SIGTERM is blocked here and taken with sigtimedwait, never through a handler: the
death signal comes once for each agent thread that exits (the kernel hands the wrapper
to the next live thread and signals it again), so several arrive when the agent dies,
spread over milliseconds under load. A handler raising on each would, on a later one,
break out of the clean-up below and leave the command running for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from entrypoint.processes import TAG_VARIABLE, end_tagged

GRACE_SECONDS = 2.0
# Only a backstop: SIGCHLD ends the wait as soon as the command exits.
WAIT_SECONDS = 1.0
WAITED = {signal.SIGTERM, signal.SIGCHLD}
TERMINATED = 128 + signal.SIGTERM


def main(argv: list[str]) -> int:
    home, _, name = os.environ[TAG_VARIABLE].rpartition(":")
    # A SIGTERM before this line kills the wrapper before it started anything; from
    # here on it stays pending until _run takes it, and the clean-up cannot be cut short.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    try:
        if os.getppid() == 1:  # the agent died before the death signal was armed
            return TERMINATED
        return _run(argv)
    finally:
        end_tagged(home, [name], time.monotonic() + GRACE_SECONDS)


def _run(argv: list[str]) -> int:
    """The command's exit code, or TERMINATED as soon as SIGTERM comes (the agent died
    or asks it to stop)."""
    process = subprocess.Popen(argv, preexec_fn=_unblock)
    while (code := process.poll()) is None:
        info = signal.sigtimedwait(WAITED, WAIT_SECONDS)
        if info is not None and info.si_signo == signal.SIGTERM:
            return TERMINATED
    return 128 - code if code < 0 else code


def _unblock() -> None:
    """The command gets signals as usual (a blocked mask is inherited through exec)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
