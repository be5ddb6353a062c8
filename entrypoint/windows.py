"""LIVE_PULL_UPDATE_WINDOW: the times at which an update may go live.

A spec is one or more windows, comma-separated; each is `[DAYS] HH:MM-HH:MM [ZONE]`:

    Mon-Fri 09:00-17:00 Europe/Berlin, Sat 02:00-04:00 UTC, 22:00-02:00

DAYS is one day (`Sat`) or a range (`Mon-Fri`, `Fri-Mon`); without it, every day.
ZONE is an IANA time zone (through zoneinfo; the tzdata package ships them); without
it, UTC. Times are wall-clock times in that zone, so a window keeps its local hours
across daylight-saving changes. An end at or before the start crosses midnight: the
window opens on the named day and closes the next morning. `24:00` ends at midnight.

The evaluation takes the moment as an argument (an aware datetime): the caller owns the
clock, so tests inject one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY_DAY = frozenset(range(7))
MINUTES_A_DAY = 24 * 60
EXAMPLE = "Mon-Fri 09:00-17:00 Europe/Berlin"
WINDOW = re.compile(
    r"(?:(?P<days>[A-Za-z]+(?:-[A-Za-z]+)?)\s+)?"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})"
    r"(?:\s+(?P<zone>\S+))?"
)
LOOKAHEAD_DAYS = 15  # every window opens within two weeks (one skipped by a DST gap)


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # the weekdays it opens on (Monday is 0), in its zone
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight; at or before `start`: the next day
    zone: ZoneInfo

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def open_at(self, moment: datetime) -> bool:
        local = moment.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if not self.crosses_midnight:
            return today in self.days and self.start <= minute < self.end
        yesterday = (today - 1) % 7
        return (today in self.days and minute >= self.start) or (
            yesterday in self.days and minute < self.end
        )

    def next_opening(self, moment: datetime) -> datetime | None:
        """The first start of this window after `moment`. A start in a skipped
        daylight-saving hour reads as the same wall time an hour later; if the window is
        closed by then, it opens on its next day."""
        first = moment.astimezone(self.zone).date()
        for offset in range(LOOKAHEAD_DAYS):
            day = first + timedelta(days=offset)
            if day.weekday() in self.days:
                opening = self._start_on(day)
                if opening > moment and self.open_at(opening):
                    return opening
        return None

    def _start_on(self, day: date) -> datetime:
        local = time(self.start // 60, self.start % 60)
        return datetime.combine(day, local, tzinfo=self.zone).astimezone(UTC)


@dataclass(frozen=True)
class UpdateWindows:
    """Several windows: open when any of them is."""

    windows: tuple[Window, ...]
    spec: str

    def open_at(self, moment: datetime) -> bool:
        return any(window.open_at(moment) for window in self.windows)

    def next_opening(self, moment: datetime) -> datetime | None:
        """`moment` itself when open, else the next time a window opens (UTC)."""
        if self.open_at(moment):
            return moment
        found = [w.next_opening(moment) for w in self.windows]
        return min((at for at in found if at is not None), default=None)

    def __str__(self) -> str:
        return self.spec


def parse_windows(spec: str) -> UpdateWindows:
    """Parse a spec; ValueError names the part that is wrong and how to write it."""
    parts = [part.strip() for part in spec.split(",")]
    if not any(parts):
        raise ValueError(f"no window given (write e.g. {EXAMPLE!r})")
    if not all(parts):
        raise ValueError(f"an empty window in {spec.strip()!r} (a stray comma?)")
    return UpdateWindows(tuple(_window(part) for part in parts), spec.strip())


def _window(text: str) -> Window:
    match = WINDOW.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a window (write e.g. {EXAMPLE!r})")
    start = _minutes(match["start"], allow_midnight_end=False)
    end = _minutes(match["end"], allow_midnight_end=True)
    if start == end % MINUTES_A_DAY and end != MINUTES_A_DAY:
        raise ValueError(f"{text!r} is empty (it starts when it ends; 00:00-24:00 is all day)")
    return Window(_days(match["days"]), start, end, _zone(match["zone"]))


def _minutes(text: str, *, allow_midnight_end: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if allow_midnight_end and (hours, minutes) == (24, 0):
        return MINUTES_A_DAY
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a time of day (HH:MM, 00:00 to 23:59; 24:00 as an end)")
    return hours * 60 + minutes


def _days(text: str | None) -> frozenset[int]:
    if text is None:
        return EVERY_DAY
    first, _, last = text.partition("-")
    start = _day(first)
    stop = _day(last) if last else start
    return frozenset((start + step) % 7 for step in range((stop - start) % 7 + 1))


def _day(name: str) -> int:
    try:
        return DAY_NAMES.index(name.lower())
    except ValueError:
        known = ", ".join(day.title() for day in DAY_NAMES)
        raise ValueError(f"{name!r} is not a day ({known})") from None


def _zone(name: str | None) -> ZoneInfo:
    if name is None:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not a time zone (IANA, e.g. Europe/Berlin)") from None
