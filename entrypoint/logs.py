"""Logging for the agent: one line per event, on stderr, secrets masked as a last guard.

Two formats (LIVE_PULL_LOG_FORMAT): `text`, and `json` for log shippers: one object a
line, with the `key=value` facts of a message as fields of their own. The app's lines
are wrapped the same way by entrypoint.relay, which writes through write_line too.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import select
import stat
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

FORMAT = "%(asctime)s live-pull %(levelname)s %(name)s: %(message)s"
MASK = "***"
AGENT = "live-pull"  # the `program` of the agent's own lines
# A placeholder of a %-style message; `%%` is a literal percent sign.
PLACEHOLDER = re.compile(r"%(?:%|(?P<spec>[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]))")
# `key=` right before a placeholder: the value that fills it is a fact.
FACT_KEY = re.compile(r"(?<![\w.=-])(?P<key>[A-Za-z_]\w*)=\Z")
# Fields every line may carry: a fact of the same name is left in the message only.
RESERVED = frozenset(
    {"time", "level", "program", "logger", "message", "stream", "process", "exc_info"}
)
NUMBER_SPECS = frozenset({"s", "d", "i"})
_WRITE_LOCKS = {1: threading.Lock(), 2: threading.Lock()}


class Masker:
    """Replaces known secret strings (4 characters or more) with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [secret for secret in secrets if len(secret) >= 4]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class RedactSecrets(logging.Filter):
    """Mask known secret strings in every record, whatever code logged them."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.mask = Masker(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.mask.secrets:
            record.msg, record.args = self.mask(record.getMessage()), None
        return True


def configure_logging(level: str, secrets: Iterable[str] = (), fmt: str = "text") -> None:
    handler: logging.Handler
    if fmt == "json":
        handler = LineHandler(2)
        handler.setFormatter(JsonFormatter(Masker(secrets)))
        _route_uncaught_to_log()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # GitPython logs every command at DEBUG; ours already say what matters.
    logging.getLogger("git").setLevel(max(logging.INFO, logging.getLevelName(level)))


def json_output() -> bool:
    """Whether the agent logs JSON lines (configure_logging with fmt="json")."""
    return any(isinstance(handler, LineHandler) for handler in logging.getLogger().handlers)


def _route_uncaught_to_log() -> None:
    """Warnings and uncaught exceptions become lines of the log, not bare text."""
    logging.captureWarnings(True)
    log = logging.getLogger("entrypoint")

    def on_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        log.critical("uncaught exception", exc_info=(kind, exc, tb))

    def in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
            where = args.thread.name if args.thread else "?"
            exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
            log.critical("uncaught exception in thread=%s", where, exc_info=exc_info)

    sys.excepthook = on_uncaught
    threading.excepthook = in_thread


class JsonFormatter(logging.Formatter):
    """One record as one JSON object: time (ISO 8601, UTC), level, program, logger,
    message, the message's `key=value` facts, and the traceback if any; masked."""

    def __init__(self, mask: Masker) -> None:
        super().__init__()
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": utc_time(record.created),
            "level": record.levelname.lower(),
            "program": AGENT,
            "logger": record.name,
            "message": self.mask(record.getMessage()),
        }
        for key, value in facts(record).items():
            fields.setdefault(key, _masked(value, self.mask))
        if record.exc_info:
            fields["exc_info"] = self.mask(self.formatException(record.exc_info))
        if record.stack_info:
            fields["stack_info"] = self.mask(record.stack_info)
        return json_text(fields)


def facts(record: logging.LogRecord) -> dict[str, Any]:
    """The `key=%s` facts of a %-style message, from the arguments that fill them: the
    whole value (spaces and all), numbers as numbers. Nothing when the placeholders and
    the arguments do not line up."""
    args = record.args
    if not isinstance(record.msg, str) or not isinstance(args, tuple):
        return {}
    found: dict[str, Any] = {}
    index = 0
    for match in PLACEHOLDER.finditer(record.msg):
        spec = match["spec"]
        if spec is None:
            continue
        if index >= len(args):
            return {}
        key = FACT_KEY.search(record.msg, 0, match.start())
        if key is not None and key["key"] not in RESERVED:
            found.setdefault(key["key"], _fact_value(match.group(), spec[-1], args[index]))
        index += 1
    return found if index == len(args) else {}


def _fact_value(placeholder: str, conversion: str, value: object) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and conversion in NUMBER_SPECS:
        return value
    if isinstance(value, float) and placeholder == "%s":
        return value
    try:
        return placeholder % (value,)
    except (TypeError, ValueError):
        return str(value)


def _masked(value: Any, mask: Masker) -> Any:
    if isinstance(value, str):
        return mask(value)
    shown = str(value)
    return value if mask(shown) == shown else mask(shown)


def utc_time(timestamp: float) -> str:
    """ISO 8601 in UTC, to the millisecond: 2026-12-05T08:00:00.123Z."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_text(fields: Mapping[str, Any]) -> str:
    """One line of JSON: control characters and newlines are escaped by json."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str)


def json_line(fields: Mapping[str, Any]) -> bytes:
    """The line as bytes; a lone surrogate (text decoded with surrogateescape) becomes
    a \\u escape, so the output is always UTF-8."""
    return (json_text(fields) + "\n").encode("utf-8", "backslashreplace")


class LineHandler(logging.Handler):
    """Writes each formatted record as one line to a file descriptor (write_line)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            write_line(self.fd, line)
        except Exception:
            self.handleError(record)


def write_line(fd: int, data: bytes) -> None:
    """Write whole lines to stdout (1) or stderr (2), one writer at a time, so lines of
    the agent and of the app never interleave. Blocks while the output is full."""
    with _WRITE_LOCKS[fd]:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:  # someone made the shared output non-blocking
                select.select([], [fd], [], 1.0)


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
