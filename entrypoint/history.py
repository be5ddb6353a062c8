"""The history: the last MAX_EVENTS events (updates, rollbacks, pauses), kept in the file
`history` of LIVE_PULL_HOME, one JSON object a line, oldest first.

The file is rewritten whole through a temporary file and a rename, so a reader (or an
agent killed mid-write) sees the old list or the new one. A file that cannot be read
starts an empty history, with a warning; a line that cannot be read is dropped. A file
that cannot be written (a full disk) costs a warning, never the update.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from entrypoint.events import Event, Sink
from entrypoint.files import write_atomic

log = logging.getLogger(__name__)

MAX_EVENTS = 200
_EVENT = TypeAdapter(Event)


class History(Sink):
    def __init__(self, path: Path, limit: int = MAX_EVENTS) -> None:
        self.path = path
        self.limit = limit
        self._lock = threading.Lock()
        self._events: list[Event] = self._load()[-limit:]

    def record(self, event: Event) -> None:
        with self._lock:
            self._events = [*self._events, event][-self.limit :]
            text = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in self._events)
        try:
            write_atomic(self.path, text)
        except OSError as exc:
            log.warning("history not saved path=%s error=%s", self.path, exc.strerror or exc)

    def events(self) -> list[dict[str, Any]]:
        """Oldest first, newest last."""
        with self._lock:
            return [asdict(event) for event in self._events]

    def _load(self) -> list[Event]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("history unreadable, starting empty path=%s error=%s", self.path, exc)
            return []
        events, dropped = [], 0
        for line in text.splitlines():
            event = _parse(line)
            if event is None:
                dropped += line.strip() != ""
            else:
                events.append(event)
        if dropped:
            log.warning("history lines unreadable, dropped path=%s lines=%d", self.path, dropped)
        return events


def _parse(line: str) -> Event | None:
    try:
        return _EVENT.validate_json(line, strict=True)
    except ValidationError:
        return None
