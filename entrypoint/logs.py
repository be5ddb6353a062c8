"""Logging for the agent: one line per event, on stderr, secrets masked as a last guard."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import sys
from collections.abc import Iterable

FORMAT = "%(asctime)s live-pull %(levelname)s %(name)s: %(message)s"
MASK = "***"


class RedactSecrets(logging.Filter):
    """Mask known secret strings in every record, whatever code logged them."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if len(secret) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, MASK)
            record.msg, record.args = message, None
        return True


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # GitPython logs every command at DEBUG; ours already say what matters.
    logging.getLogger("git").setLevel(max(logging.INFO, logging.getLevelName(level)))


def append_to_output_files() -> None:
    """When stdout or stderr is a regular file (`live-pull run > agent.log`), put it in
    append mode. supervisord opens /dev/fd/1 anew, in append mode, for the app's
    output; writes through the inherited descriptor (ours, supervisord's own lines)
    would otherwise land at their own offset, over the app's lines."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)
