"""The relay of the app's output as JSON lines: framing, bounds, and a real child."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from entrypoint import logs
from entrypoint.logs import Masker
from entrypoint.relay import Backlog, Batch, JsonRelay, Source, encode_batch, line_fields

NOW = 1_800_000_000.0
WHEN = "2027-01-15T08:00:00.000Z"


def source(program: str = "web", process: str = "web", limit: int = 16) -> Source:
    return Source(program, process, "stdout", -1, ends=True, limit=limit)


def test_whole_lines_pass_and_a_partial_one_waits() -> None:
    src = source()
    assert src.split(b"one\ntw") == [(b"one", False)]
    assert src.split(b"o\n\nthree") == [(b"two", False), (b"", False)]
    assert src.flush() == [(b"three", False)]
    assert src.flush() == []


def test_a_long_line_is_cut_at_the_limit_and_its_rest_skipped() -> None:
    src = source(limit=16)
    assert src.split(b"x" * 10) == []
    assert src.split(b"x" * 10) == [(b"x" * 16, True)]  # at once, not at its end
    assert src.split(b"y" * 100) == []
    assert src.split(b"y\nnext\n") == [(b"next", False)]
    assert src.split(b"z" * 40 + b"\nafter\n") == [(b"z" * 16, True), (b"after", False)]


def test_fields_of_an_app_line() -> None:
    fields = line_fields(source("web", "web_1"), WHEN, (b"bad \xff\xfe byte\r", True), Masker([]))
    assert fields == {
        "time": WHEN,
        "program": "web",
        "process": "web_1",
        "stream": "stdout",
        "message": "bad \\xff\\xfe byte",
        "truncated": True,
    }
    assert "process" not in line_fields(source("worker", "worker"), WHEN, (b"x", False), Masker([]))


def test_supervisords_own_lines_carry_its_level() -> None:
    src = source("supervisord", "supervisord")
    line = b"2026-12-05 08:03:45,999 WARN received SIGTERM indicating exit request"
    fields = line_fields(src, WHEN, (line, False), Masker([]))
    assert fields["level"] == "warning"
    assert fields["message"] == "received SIGTERM indicating exit request"
    plain = line_fields(src, WHEN, (b"Traceback (most recent call last):", False), Masker([]))
    assert "level" not in plain and plain["message"].startswith("Traceback")


def test_secrets_are_masked_in_app_lines() -> None:
    fields = line_fields(source(), WHEN, (b"token=s3cr3t-value!", False), Masker(["s3cr3t-value"]))
    assert fields["message"] == "token=***!"


def test_a_batch_encodes_each_line_as_its_fields() -> None:
    lines = [(b"plain", False), (b'quote " \\ \x1b[1m \xc3\xa9 \xff', False), (b"cut", True)]
    for src in (source("web", "web_0"), source("supervisord", "supervisord")):
        encoded = encode_batch(Batch(src, NOW, lines), Masker(["plain"]))
        objects = [json.loads(line) for line in encoded.decode("utf-8").splitlines()]
        assert objects == [line_fields(src, WHEN, line, Masker(["plain"])) for line in lines]


def test_backlog_drops_what_does_not_fit_and_counts_it() -> None:
    backlog = Backlog(limit=10)
    src = source()
    backlog.put(Batch(src, NOW, [(b"12345", False), (b"678", False)]))
    backlog.put(Batch(src, NOW, [(b"abcd", False), (b"e", False)]))  # 13 > 10: dropped
    backlog.put(Batch(src, NOW, [(b"ab", False)]))
    backlog.put(None)  # the end always fits
    first, dropped = backlog.get()
    assert first is not None and len(first.lines) == 2 and dropped == 2
    second, dropped = backlog.get()
    assert second is not None and second.lines == [(b"ab", False)] and dropped == 0
    assert backlog.get() == (None, 0)


def output_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_relay_never_started_stops_quietly() -> None:
    JsonRelay(Masker([])).stop()  # an agent that failed before supervisord was spawned


def test_a_childs_output_becomes_json_lines(capfd: pytest.CaptureFixture[str]) -> None:
    relay = JsonRelay(Masker([]))
    relay.start()
    script = (
        "import sys; sys.stdout.write('out one\\nout two\\n'); sys.stdout.flush();"
        "sys.stderr.buffer.write(b'err \\xff\\n' + b'x' * 200000 + b'\\nno newline')"
    )
    with relay.child_streams("web") as streams:
        child = subprocess.Popen([sys.executable, "-c", script], **streams)  # type: ignore[call-overload]
    assert child.wait(timeout=30) == 0
    relay.stop()
    captured = capfd.readouterr()
    out, err = output_lines(captured.out), output_lines(captured.err)
    assert [line["message"] for line in out] == ["out one", "out two"]
    assert {line["program"] for line in out + err} == {"web"}
    assert [line["message"][:10] for line in err] == ["err \\xff", "x" * 10, "no newline"]
    assert len(err[1]["message"]) == 64 * 1024 and err[1]["truncated"] is True


def test_named_pipes_of_supervisord_programs(capfd: pytest.CaptureFixture[str]) -> None:
    relay = JsonRelay(Masker([]))
    relay.start()
    relay.prepare({"web_0": "web", "worker": "worker"})
    assert relay.logs_dir is not None
    with open(relay.logs_dir / "worker.stdout", "wb") as pipe:  # as supervisord opens it
        pipe.write(b"working\n")
    with open(relay.logs_dir / "web_0.stderr", "wb") as pipe:
        pipe.write(b"serving\n")
    relay.stop()
    captured = capfd.readouterr()
    assert output_lines(captured.out)[0]["program"] == "worker"
    assert output_lines(captured.err)[0] == {
        **output_lines(captured.err)[0],
        "program": "web",
        "process": "web_0",
        "message": "serving",
    }
    assert not relay.logs_dir.exists()


@pytest.mark.usefixtures("json_logging")
def test_a_stuck_output_never_blocks_the_app(capfd: pytest.CaptureFixture[str]) -> None:
    """While the container's stdout takes nothing (its lock held, as a write blocked on a
    full pipe would), a child flooding 20 MB exits anyway; what did not fit is dropped,
    counted and logged, and every line written is whole."""
    relay = JsonRelay(Masker([]), backlog_bytes=64 * 1024)
    relay.start()
    flood = "import sys\nfor n in range(200000): sys.stdout.write(f'{n:08d}' + 'f' * 92 + '\\n')"
    with logs._WRITE_LOCKS[1]:
        with relay.child_streams("web") as streams:
            child = subprocess.Popen([sys.executable, "-c", flood], **streams)  # type: ignore[call-overload]
        started = time.monotonic()
        assert child.wait(timeout=60) == 0
        flooded_in = time.monotonic() - started
    relay.stop()
    captured = capfd.readouterr()
    out = output_lines(captured.out)
    assert 0 < len(out) < 200000, flooded_in
    assert all(len(line["message"]) == 100 for line in out)
    warnings = [line for line in output_lines(captured.err) if line.get("level") == "warning"]
    assert sum(warning["lines"] for warning in warnings) == 200000 - len(out)


@pytest.fixture
def json_logging() -> Iterator[None]:
    """The agent's logging as LIVE_PULL_LOG_FORMAT=json sets it; put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook
    logs.configure_logging("INFO", fmt="json")
    yield
    root.handlers[:], root.level = handlers, level
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)
