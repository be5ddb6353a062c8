"""LIVE_PULL_UPDATE_WINDOW: parsing, and whether a window is open at a given moment
(the moment is passed in: no clock is read)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from entrypoint.cli import EXIT_CONFIG, main
from entrypoint.config import load_settings
from entrypoint.errors import ConfigError
from entrypoint.windows import parse_windows

# 2026-01-12 is a Monday (Berlin on CET, UTC+1); 2026-07-13 a Monday (CEST, UTC+2).
# Berlin springs forward on 2026-03-29 (02:00 -> 03:00) and falls back on 2026-10-25.


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def opened(spec: str, *moments: str) -> list[bool]:
    windows = parse_windows(spec)
    return [windows.open_at(utc(moment)) for moment in moments]


def test_weekdays_and_hours() -> None:
    assert opened(
        "Mon-Fri 09:00-17:00 UTC",
        "2026-01-12 08:59",  # Monday, before
        "2026-01-12 09:00",  # opens
        "2026-01-16 16:59",  # Friday, last minute
        "2026-01-16 17:00",  # closed
        "2026-01-17 10:00",  # Saturday
        "2026-01-18 10:00",  # Sunday
    ) == [False, True, True, False, False, False]


def test_a_single_day_and_a_range_across_the_week_end() -> None:
    assert opened("Sat 02:00-04:00 UTC", "2026-01-17 03:00", "2026-01-18 03:00") == [True, False]
    weekend = ["2026-01-16 12:00", "2026-01-18 12:00", "2026-01-19 12:00", "2026-01-20 12:00"]
    assert opened("fri-MON 00:00-24:00", *weekend) == [True, True, True, False]


def test_no_days_means_every_day_and_no_zone_means_utc() -> None:
    days = [f"2026-01-{day} 10:30" for day in range(12, 19)]
    assert opened("10:00-11:00", *days) == [True] * 7


def test_a_window_crossing_midnight_closes_the_next_morning() -> None:
    assert opened(
        "22:00-02:00",
        "2026-01-12 21:59",
        "2026-01-12 22:00",
        "2026-01-12 23:59",
        "2026-01-13 00:00",
        "2026-01-13 01:59",
        "2026-01-13 02:00",
    ) == [False, True, True, True, True, False]


def test_the_day_of_a_window_crossing_midnight_is_the_day_it_opens() -> None:
    assert opened(
        "Mon 22:00-02:00",
        "2026-01-12 01:00",  # Monday morning: Sunday night's window, not one
        "2026-01-12 23:00",  # Monday night
        "2026-01-13 01:00",  # still Monday's window
        "2026-01-13 23:00",  # Tuesday night
    ) == [False, True, True, False]


def test_local_hours_are_kept_across_daylight_saving_in_berlin() -> None:
    spec = "Mon-Fri 09:00-17:00 Europe/Berlin"
    winter = ["2026-01-12 07:59", "2026-01-12 08:00", "2026-01-12 15:59", "2026-01-12 16:00"]
    summer = ["2026-07-13 06:59", "2026-07-13 07:00", "2026-07-13 14:59", "2026-07-13 15:00"]
    assert opened(spec, *winter) == [False, True, True, False]
    assert opened(spec, *summer) == [False, True, True, False]


def test_the_next_opening_across_the_spring_change() -> None:
    windows = parse_windows("Mon-Fri 09:00-17:00 Europe/Berlin")
    friday_evening = utc("2026-03-27 17:00")  # 18:00 CET
    assert windows.next_opening(friday_evening) == utc("2026-03-30 07:00")  # 09:00 CEST


def test_a_window_in_the_skipped_hour_waits_a_week_and_the_repeated_hour_counts_twice() -> None:
    windows = parse_windows("Sun 02:00-03:00 Europe/Berlin")
    assert not any(
        windows.open_at(utc("2026-03-29 00:00") + timedelta(minutes=m)) for m in range(0, 180)
    )
    assert windows.next_opening(utc("2026-03-28 12:00")) == utc("2026-04-05 00:00")
    assert opened("Sun 02:00-03:00 Europe/Berlin", "2026-10-25 00:30", "2026-10-25 01:30") == [
        True,
        True,
    ]


def test_several_windows_any_one_open_and_the_earliest_opening() -> None:
    spec = "Mon-Fri 09:00-17:00 Europe/Berlin, Sat 02:00-04:00 UTC, Sun 22:00-02:00"
    windows = parse_windows(spec)
    assert opened(spec, "2026-01-17 03:00", "2026-01-18 23:00", "2026-01-19 01:00") == [
        True,
        True,
        True,
    ]
    assert not windows.open_at(utc("2026-01-17 12:00"))  # Saturday noon
    assert windows.next_opening(utc("2026-01-17 12:00")) == utc("2026-01-18 22:00")
    assert windows.next_opening(utc("2026-01-19 01:00")) == utc("2026-01-19 01:00")  # open
    assert windows.next_opening(utc("2026-01-19 02:00")) == utc("2026-01-19 08:00")
    assert str(windows) == spec


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("Mon-Fri 9-17", "'Mon-Fri 9-17' is not a window"),
        ("Mon-Fri 09:00-17:00 Europe/Berln", "'Europe/Berln' is not a time zone"),
        ("Mun 09:00-17:00", "'Mun' is not a day"),
        ("Mon-Fry 09:00-17:00", "'Fry' is not a day"),
        ("09:00-25:00", "'25:00' is not a time of day"),
        ("24:00-02:00", "'24:00' is not a time of day"),
        ("09:60-10:00", "'09:60' is not a time of day"),
        ("09:00-09:00", "'09:00-09:00' is empty"),
        ("Mon-Fri 09:00-17:00,", "an empty window"),
        (",", "no window given"),
        ("always", "'always' is not a window"),
        ("09:00-17:00 Europe/Berlin extra", "is not a window"),
    ],
)
def test_bad_specs_fail_at_config_time_with_one_line(spec: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"REPO_URL": "file:///x", "LIVE_PULL_UPDATE_WINDOW": spec})
    message = str(raised.value)
    assert message.startswith("LIVE_PULL_UPDATE_WINDOW: ")
    assert problem in message
    assert "\n" not in message


def test_a_bad_spec_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REPO_URL", "file:///x")
    monkeypatch.setenv("LIVE_PULL_UPDATE_WINDOW", "weekdays 9 to 5")

    assert main(["check-config"]) == EXIT_CONFIG

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "LIVE_PULL_UPDATE_WINDOW: 'weekdays 9 to 5'" in lines[0]


def test_a_good_spec_is_shown_as_given_and_blank_means_any_time() -> None:
    spec = "Sat 02:00-04:00 UTC, 22:00-02:00"
    settings = load_settings({"REPO_URL": "file:///x", "LIVE_PULL_UPDATE_WINDOW": f" {spec} "})
    assert settings.effective()["LIVE_PULL_UPDATE_WINDOW"] == spec
    assert settings.update_windows is not None
    blank = load_settings({"REPO_URL": "file:///x", "LIVE_PULL_UPDATE_WINDOW": " "})
    assert blank.update_windows is None
