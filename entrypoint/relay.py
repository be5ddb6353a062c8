"""The app's output, and supervisord's own, as JSON lines (LIVE_PULL_LOG_FORMAT=json).

supervisord writes each program's stdout and stderr to a named pipe of its own (its
`stdout_logfile`), and its own lines to a pipe; one reader thread in the agent splits
what arrives into lines, one writer thread wraps each line in an object (time, program,
stream, message) and writes it to the agent's stdout or stderr.

What the app writes is never held up by the container's log: the reader only reads and
splits, and hands whole lines to a backlog bounded in bytes; when the output falls
that far behind, lines are dropped, counted, and the count logged. A line longer than
LINE_LIMIT is cut there (`"truncated": true`) and the rest of it skipped; bytes that are
not UTF-8 show as `\\xNN`; a partial line is written once nothing follows it for
PARTIAL_WAIT seconds. With LIVE_PULL_LOG_FORMAT=text, Inherited leaves the app's output
to supervisord, straight to the agent's stdout and stderr.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import re
import selectors
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, Protocol

from entrypoint.logs import Masker, json_line, json_text, utc_time, write_line

log = logging.getLogger(__name__)

SUPERVISORD = "supervisord"  # the `program` of supervisord's own lines
STREAMS = {"stdout": 1, "stderr": 2}  # where each stream's lines go
LINE_LIMIT = 64 * 1024
BACKLOG_BYTES = 16 * 1024 * 1024
PARTIAL_WAIT = 1.0
READ_SIZE = 128 * 1024
PIPE_SIZE = 1024 * 1024  # room for a burst while the reader waits for the CPU
STOP_WAIT = 5.0
# supervisord's own format: "%(asctime)s %(levelname)s %(message)s".
SUPERVISORD_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]{4}) ")
SUPERVISORD_LEVELS = {
    "CRIT": "critical",
    "ERRO": "error",
    "WARN": "warning",
    "INFO": "info",
    "DEBG": "debug",
    "TRAC": "debug",
    "BLAT": "debug",
}
TRUNCATED = ',"truncated":true'
Line = tuple[bytes, bool]  # the line's bytes, and whether it was cut at LINE_LIMIT


class AppOutput(Protocol):
    """Where supervisord and the programs it runs write (see supervisor_config)."""

    @property
    def logs_dir(self) -> Path | None:
        """The programs' output pipes, `<process>.stdout|stderr`; None: our stdout/err."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def prepare(self, processes: Mapping[str, str]) -> None:
        """Ready the output of these processes (process name: program) before they run."""

    def child_streams(self, program: str) -> contextlib.AbstractContextManager[dict[str, int]]:
        """subprocess.Popen's stdout and stderr for a child whose output is `program`'s."""


class Inherited:
    """LIVE_PULL_LOG_FORMAT=text: everything writes to the agent's stdout and stderr."""

    logs_dir: Path | None = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def prepare(self, processes: Mapping[str, str]) -> None:
        pass

    @contextlib.contextmanager
    def child_streams(self, program: str) -> Iterator[dict[str, int]]:
        yield {}


def app_output(fmt: str, mask: Masker) -> AppOutput:
    return JsonRelay(mask) if fmt == "json" else Inherited()


@dataclass(eq=False)
class Source:
    """One stream of one process: its read end, and the line it is in the middle of."""

    program: str
    process: str
    stream: str
    fd: int
    ends: bool  # a pipe, done at end of file (a named pipe stays open)
    limit: int = LINE_LIMIT
    pending: bytearray = field(default_factory=bytearray)
    skipping: bool = False  # in the rest of a line cut at the limit
    last: float = 0.0

    def split(self, data: bytes) -> list[Line]:
        """Whole lines of what has arrived; the start of the next one waits."""
        self.last = time.monotonic()
        lines: list[Line] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data[start:end], lines, ended=True)
            start = end + 1
        self._take(data[start:], lines, ended=False)
        return lines

    def _take(self, piece: bytes, lines: list[Line], ended: bool) -> None:
        if self.skipping:
            self.skipping = not ended
            return
        self.pending += piece
        if len(self.pending) > self.limit:
            lines.append((bytes(self.pending[: self.limit]), True))
            self.pending.clear()
            self.skipping = not ended
        elif ended:
            lines.append((bytes(self.pending), False))
            self.pending.clear()

    def flush(self) -> list[Line]:
        """The partial line, as a line of its own."""
        partial = bytes(self.pending)
        self.pending.clear()
        return [(partial, False)] if partial else []


def line_fields(source: Source, when: str, line: Line, mask: Masker) -> dict[str, Any]:
    """One line of a program (or of supervisord) as the fields of its JSON object;
    `when`: the time it was read (utc_time)."""
    raw, truncated = line
    text = _text(raw, mask)
    fields: dict[str, Any] = {"time": when}
    if source.program == SUPERVISORD:
        match = SUPERVISORD_LINE.match(text)
        if match is not None:
            fields["level"] = SUPERVISORD_LEVELS.get(match["level"], match["level"].lower())
            text = text[match.end() :]
    fields["program"] = source.program
    if source.process != source.program:
        fields["process"] = source.process  # a slot of web: web_0, web_1
    fields["stream"] = source.stream
    fields["message"] = text
    if truncated:
        fields["truncated"] = True
    return fields


def encode_batch(batch: Batch, mask: Masker) -> bytes:
    """The batch's lines as JSON lines, each the object line_fields describes. For the
    app's lines, what they share is encoded once per batch and each message by json's
    own string encoder, so the writer keeps up with a flood (bench/log_flood.py)."""
    when, source = utc_time(batch.when), batch.source
    if source.program == SUPERVISORD:
        return b"".join(json_line(line_fields(source, when, line, mask)) for line in batch.lines)
    shared = line_fields(source, when, (b"", False), mask)
    del shared["message"]
    start = json_text(shared)[:-1] + ',"message":'
    text = "".join(
        f"{start}{encode_basestring(_text(raw, mask))}{TRUNCATED if cut else ''}}}\n"
        for raw, cut in batch.lines
    )
    return text.encode("utf-8", "backslashreplace")


def _text(raw: bytes, mask: Masker) -> str:
    return mask(raw.removesuffix(b"\r").decode("utf-8", "backslashreplace"))


@dataclass(frozen=True)
class Batch:
    source: Source
    when: float
    lines: list[Line]

    @property
    def size(self) -> int:
        return sum(len(raw) for raw, _ in self.lines)


class Backlog:
    """Lines read and not yet written, bounded in bytes: what does not fit is dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._items: collections.deque[Batch | None] = collections.deque()
        self._size = 0
        self._ready = threading.Condition()

    def put(self, batch: Batch | None) -> None:
        """None (the end) is always taken."""
        size = batch.size if batch is not None else 0
        with self._ready:
            if batch is not None and self._size + size > self.limit:
                self.dropped += len(batch.lines)
                return
            self._items.append(batch)
            self._size += size
            self._ready.notify()

    def get(self) -> tuple[Batch | None, int]:
        """The next batch (None: the end), and the lines dropped since the last get."""
        with self._ready:
            while not self._items:
                self._ready.wait()
            batch = self._items.popleft()
            self._size -= batch.size if batch is not None else 0
            dropped, self.dropped = self.dropped, 0
            return batch, dropped


class JsonRelay:
    """LIVE_PULL_LOG_FORMAT=json: the reader and the writer thread described above."""

    def __init__(self, mask: Masker, backlog_bytes: int = BACKLOG_BYTES) -> None:
        self.mask = mask
        self.backlog = Backlog(backlog_bytes)
        self.logs_dir: Path | None = None
        self._selector = selectors.DefaultSelector()
        self._new: collections.deque[Source] = collections.deque()
        self._sources: set[Source] = set()
        self._prepared: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._threads = [
            threading.Thread(target=self._read_loop, name="output-reader", daemon=True),
            threading.Thread(target=self._write_loop, name="output-writer", daemon=True),
        ]

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        # Private to the agent: the app user cannot open the programs' pipes.
        self.logs_dir = Path(tempfile.mkdtemp(prefix="live-pull-output-"))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Write what is left (supervisord has stopped: its pipes hold their last lines),
        for at most STOP_WAIT seconds, then let go of the pipes."""
        self._stopping.set()
        self._wake()
        deadline = time.monotonic() + STOP_WAIT
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in self._threads):
            self._close_all()
        if self.logs_dir is not None:
            shutil.rmtree(self.logs_dir, ignore_errors=True)

    def _close_all(self) -> None:
        self._selector.close()
        for fd in [self._wake_r, self._wake_w, *(source.fd for source in self._sources)]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._sources.clear()

    # -- what supervisord and the agent's children write to --------------------------

    def prepare(self, processes: Mapping[str, str]) -> None:
        """A named pipe per stream of each process, open for reading before supervisord
        opens it (so its open never waits)."""
        assert self.logs_dir is not None, "prepare before start"
        with self._lock:
            for process, program in processes.items():
                if process in self._prepared:
                    continue
                for stream in STREAMS:
                    path = self.logs_dir / f"{process}.{stream}"
                    os.mkfifo(path, 0o600)
                    # Read and write: a named pipe nobody writes to then never reads as
                    # ended, and a reopen by supervisord (a restart) finds a reader.
                    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                    self._add(Source(program, process, stream, fd, ends=False))
                self._prepared.add(process)

    @contextlib.contextmanager
    def child_streams(self, program: str) -> Iterator[dict[str, int]]:
        """A pipe per stream; the child's output is `program`'s. The write ends are
        closed once the block (that starts the child) is done."""
        ends: dict[str, int] = {}
        try:
            for stream in STREAMS:
                read_end, ends[stream] = os.pipe()
                os.set_blocking(read_end, False)
                self._add(Source(program, program, stream, read_end, ends=True))
            yield ends
        finally:
            for write_end in ends.values():
                os.close(write_end)

    def _add(self, source: Source) -> None:
        with contextlib.suppress(OSError):  # a bigger pipe is a nicety
            fcntl.fcntl(source.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._new.append(source)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b".")

    # -- the reader --------------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self._stopping.is_set():
            self._register_new()
            for key, _ in self._selector.select(timeout=PARTIAL_WAIT):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                else:
                    self._read(key.data)
            self._flush_idle(time.monotonic() - PARTIAL_WAIT)
        self._register_new()
        for source in list(self._sources):
            self._drain(source)
        self.backlog.put(None)

    def _register_new(self) -> None:
        while self._new:
            source = self._new.popleft()
            self._sources.add(source)
            self._selector.register(source.fd, selectors.EVENT_READ, source)

    def _read(self, source: Source) -> bool:
        """One read; False once there is nothing more to read for now."""
        try:
            data = os.read(source.fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            if source.ends:
                self._close(source)
            return False
        self._pass_on(source, source.split(data))
        return True

    def _drain(self, source: Source) -> None:
        while source in self._sources and self._read(source):
            pass
        self._pass_on(source, source.flush())

    def _close(self, source: Source) -> None:
        self._pass_on(source, source.flush())
        self._selector.unregister(source.fd)
        self._sources.discard(source)
        os.close(source.fd)

    def _flush_idle(self, before: float) -> None:
        for source in self._sources:
            if source.pending and source.last < before:
                self._pass_on(source, source.flush())

    def _pass_on(self, source: Source, lines: list[Line]) -> None:
        if lines:
            self.backlog.put(Batch(source, time.time(), lines))

    # -- the writer --------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            batch, dropped = self.backlog.get()
            if dropped:
                log.warning(
                    "app output dropped lines=%d: the container's log output fell behind",
                    dropped,
                )
            if batch is None:
                return
            with contextlib.suppress(OSError):  # no output left to write to
                write_line(STREAMS[batch.source.stream], encode_batch(batch, self.mask))
