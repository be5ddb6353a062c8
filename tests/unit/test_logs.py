"""The agent's JSON lines (LIVE_PULL_LOG_FORMAT=json): fields, facts, masking."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

import pytest

from entrypoint.logs import JsonFormatter, LineHandler, Masker, facts, json_line

SECRET = "s3cr3t-t0ken-value"


def record(
    msg: str, *args: object, level: int = logging.INFO, exc_info: Any = None
) -> logging.LogRecord:
    return logging.LogRecord("entrypoint.updater", level, __file__, 1, msg, args, exc_info)


def formatted(rec: logging.LogRecord, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    line = JsonFormatter(Masker(secrets)).format(rec)
    assert "\n" not in line
    return dict(json.loads(line))


def test_a_record_is_one_object_with_time_level_logger_message() -> None:
    fields = formatted(record("revision live sha=%s", "abc123", level=logging.WARNING))
    assert list(fields)[:5] == ["time", "level", "program", "logger", "message"]
    assert fields["level"] == "warning"
    assert fields["program"] == "live-pull"
    assert fields["logger"] == "entrypoint.updater"
    assert fields["message"] == "revision live sha=abc123"
    moment = datetime.datetime.fromisoformat(fields["time"].replace("Z", "+00:00"))
    assert fields["time"].endswith("Z") and moment.utcoffset() == datetime.timedelta(0)


def test_facts_are_the_arguments_that_fill_key_placeholders() -> None:
    rec = record(
        "install failed (%s) code=%d reason=%s took=%.1fs ratio=%s %s%% done",
        "uv",
        2,
        "no space left on device",
        1.25,
        0.5,
        "half",
    )
    assert facts(rec) == {
        "code": 2,
        "reason": "no space left on device",  # the whole value, spaces and all
        "took": "1.2",  # as the message shows it
        "ratio": 0.5,
    }


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("sha=%s extra=%s", ("a",)),  # too few arguments
        ("sha=%s", ("a", "b")),  # too many
        ("sha=%(sha)s", ({"sha": "a"},)),  # a mapping
    ],
)
def test_no_facts_when_placeholders_and_arguments_do_not_line_up(
    msg: str, args: tuple[object, ...]
) -> None:
    assert facts(record(msg, *args)) == {}


def test_a_fact_never_replaces_a_field_and_the_first_of_a_key_wins() -> None:
    fields = formatted(record("level=%s message=%s slot=%s beside slot=%s", "x", "y", "a", "b"))
    assert fields["level"] == "info"
    assert fields["message"] == "level=x message=y slot=a beside slot=b"
    assert fields["slot"] == "a"


def test_secrets_are_masked_in_message_facts_and_traceback() -> None:
    try:
        raise RuntimeError(f"fetch failed for https://bot:{SECRET}@host/r.git")
    except RuntimeError:
        exc_info = sys.exc_info()
    rec = record("fetch failed url=%s", f"https://bot:{SECRET}@host", exc_info=exc_info)
    line = JsonFormatter(Masker([SECRET])).format(rec)
    assert SECRET not in line
    fields = json.loads(line)
    assert fields["url"] == "https://bot:***@host"
    assert "RuntimeError" in fields["exc_info"]


def test_output_is_utf8_whatever_the_message_holds() -> None:
    rec = record("path=%s", "caf\udce9 \x1b[31mred\x00 \u2028 é")
    line = json_line({"message": rec.getMessage(), **facts(rec)})
    text = line.decode("utf-8")  # strict: the line is valid UTF-8
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text)["path"].startswith("caf")


def test_line_handler_writes_whole_lines_to_its_descriptor(
    capfd: pytest.CaptureFixture[str],
) -> None:
    handler = LineHandler(2)
    handler.setFormatter(JsonFormatter(Masker([])))
    for n in range(3):
        handler.handle(record("line n=%d", n))
    lines = capfd.readouterr().err.splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2]
