"""state.json: loaded strictly, rebuilt from the releases on disk when it is no good,
written atomically or not at all."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.files import write_atomic
from entrypoint.state import State, StateFile

A, B, C = "a" * 40, "b" * 40, "c" * 40
DIGEST = "0123456789abcdef" * 2


def home_with_releases(home: Path, shas: list[str], current: str | None) -> StateFile:
    """releases/<sha> for each sha, oldest first (distinct mtimes), and `current`."""
    for age, sha in enumerate(reversed(shas)):
        release = home / "releases" / sha
        release.mkdir(parents=True)
        stamp = 1_700_000_000 - age * 60
        os.utime(release, (stamp, stamp))
    if current is not None:
        (home / "current").symlink_to(Path("releases") / current)
    return StateFile(home / "state.json")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_saved_state_loads_as_saved(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "state.json")
    state = State()
    state.record_good(A, DIGEST)
    state.record_good(B, None)
    state.record_failed(C, "app never came up")
    state.baking = B
    state_file.save(state)
    assert state_file.load() == state
    assert state_file.load().baking == B  # on probation: a start bakes it again


def test_unknown_keys_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"last_good": A, "history": [A], "added_later": {"x": 1}}))
    assert StateFile(path).load() == State(last_good=A, history=[A])
    assert warnings(caplog) == []


BAD_STATES = {
    "last_good a number": '{"last_good": 12345}',
    "history a string": '{"history": "abc"}',
    "failed a list": '{"failed": []}',
    "baking not a sha": '{"baking": "not-a-sha"}',
    "a list at top level": f'["{A}"]',
    "a short sha": '{"last_good": "abc123"}',
    "an uppercase sha": json.dumps({"last_good": A.upper()}),
    "a sha in history not hex": json.dumps({"history": ["z" * 40]}),
    "a reason not a string": json.dumps({"failed": {A: 3}}),
    "a digest that is a path": json.dumps({"environments": {A: "../../etc"}}),
    "null history": '{"history": null}',
    "truncated JSON": '{"last_good": "' + A[:20],
    "empty file": "",
    "not UTF-8": "\udcff",
}


@pytest.mark.parametrize("content", list(BAD_STATES.values()), ids=list(BAD_STATES))
def test_a_bad_state_is_rebuilt_from_disk_with_one_warning(
    content: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_file = home_with_releases(tmp_path, [A, B, C], current=B)
    state_file.path.write_bytes(content.encode("utf-8", "surrogateescape"))
    state = state_file.load()
    assert state == State(last_good=B, history=[A, C, B])  # by age, the current one last
    [warning] = warnings(caplog)
    assert str(state_file.path) in warning and "rebuilt" in warning


def test_the_warning_says_what_was_wrong(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state_file = home_with_releases(tmp_path, [A], current=A)
    state_file.path.write_text('{"last_good": 12345, "history": "abc"}')
    state_file.load()
    [warning] = warnings(caplog)
    assert "last_good: Input should be a valid string (+1 more)" in warning


def test_a_state_file_that_is_a_directory_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_file = home_with_releases(tmp_path, [A], current=A)
    state_file.path.mkdir()
    assert state_file.load() == State(last_good=A, history=[A])
    [warning] = warnings(caplog)
    assert "unreadable" in warning


def test_deleted_state_is_rebuilt_from_releases_and_current(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_file = home_with_releases(tmp_path, [A, B, C], current=C)
    state = State()
    for sha in (A, B, C):
        state.record_good(sha, DIGEST)
    state.record_failed("d" * 40, "bad")
    state_file.save(state)
    (tmp_path / "releases" / ".tmp-eeee-1234").mkdir()  # an interrupted build
    (tmp_path / "releases" / "not-a-release").mkdir()
    state_file.path.unlink()

    rebuilt = state_file.load(environment_of={A: DIGEST, C: DIGEST}.get)
    assert rebuilt == State(last_good=C, history=[A, B, C], environments={A: DIGEST, C: DIGEST})
    assert rebuilt.failed == {}  # failures are forgotten
    [warning] = warnings(caplog)
    assert "missing" in warning and "last_good=cccccccccccc releases=3" in warning


def test_current_pointing_nowhere_leaves_no_last_good(tmp_path: Path) -> None:
    state_file = home_with_releases(tmp_path, [A, B], current=None)
    (tmp_path / "current").symlink_to(Path("releases") / C)  # removed by hand
    assert state_file.load() == State(last_good=None, history=[A, B])


def test_a_first_start_is_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert StateFile(tmp_path / "state.json").load() == State()
    assert warnings(caplog) == []


def test_the_rebuild_can_be_pointed_elsewhere(tmp_path: Path) -> None:
    home_with_releases(tmp_path / "elsewhere", [A], current=A)
    elsewhere = tmp_path / "elsewhere"
    state_file = StateFile(tmp_path / "state.json", elsewhere / "releases", elsewhere / "current")
    assert state_file.load() == State(last_good=A, history=[A])


# -- writing ---------------------------------------------------------------------------------


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_state_path_taken_by_a_directory_is_replaced_by_the_file(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "state.json")
    (state_file.path / "junk").mkdir(parents=True)
    state_file.save(State(last_good=A, history=[A]))
    assert state_file.path.is_file()
    assert state_file.load().last_good == A
    assert leftovers(tmp_path) == []


def test_a_parent_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("not a directory")
    state_file = StateFile(tmp_path / "home" / "state.json")
    with pytest.raises(OSError) as raised:
        state_file.save(State())
    assert raised.value.filename == str(state_file.path)


@contextlib.contextmanager
def tiny_filesystem(where: Path) -> Iterator[Path]:
    """A tmpfs of 8 KiB (root with CAP_SYS_ADMIN only; skipped elsewhere)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_fails_and_keeps_the_old_state(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "full") as home:
        state_file = StateFile(home / "state.json")
        state_file.save(State(last_good=A, history=[A]))
        with contextlib.suppress(OSError), open(home / "filler", "wb") as filler:
            filler.write(b"x" * 8192)
        big = State(last_good=B, history=[A, B], failed={C: "x" * 20_000})
        with pytest.raises(OSError) as raised:
            state_file.save(big)
        assert raised.value.errno == errno.ENOSPC
        assert leftovers(home) == []
        assert state_file.load() == State(last_good=A, history=[A])


def test_write_atomic_removes_its_temp_file_on_failure(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_text("")  # a non-empty directory cannot be replaced
    with pytest.raises(OSError):
        write_atomic(tmp_path / "taken", "text")
    assert leftovers(tmp_path) == []
    write_atomic(tmp_path / "fine", "text")
    assert (tmp_path / "fine").read_text() == "text"
