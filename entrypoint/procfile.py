"""What to run: the app's Procfile, with LIVE_PULL_COMMAND standing in for `web`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from entrypoint.errors import RevisionError
from entrypoint.files import OutsideRoot, read_inside

LINE = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)\s*:\s*(?P<command>.+)$")
RELEASE = "release"
WEB = "web"


@dataclass(frozen=True)
class Processes:
    """The long-running process types, and the one-off release step if any."""

    programs: dict[str, str]
    release: str | None


def parse_procfile(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if match is None:
            raise RevisionError(f"Procfile line {number} is not 'name: command'")
        entries[match["name"]] = match["command"].strip()
    return entries


def load_processes(
    app_path: Path, command_override: str | None, release_override: str | None = None
) -> Processes:
    """The Procfile's entries; LIVE_PULL_COMMAND replaces `web`, LIVE_PULL_RELEASE_COMMAND
    replaces `release`."""
    procfile = app_path / "Procfile"
    entries = parse_procfile(_read(app_path, procfile)) if os.path.lexists(procfile) else {}
    if command_override:
        entries[WEB] = command_override
    procfile_release = entries.pop(RELEASE, None)
    release = release_override or procfile_release
    if not entries:
        raise RevisionError("nothing to run: no Procfile entries and LIVE_PULL_COMMAND is unset")
    return Processes(programs=entries, release=release)


def _read(app_path: Path, procfile: Path) -> str:
    """The Procfile, only if it resolves inside the app's directory."""
    try:
        return read_inside(app_path, procfile)
    except OutsideRoot as exc:
        raise RevisionError(f"Procfile refused: {exc}") from exc
    except OSError as exc:
        raise RevisionError(f"Procfile cannot be read: {exc.strerror}") from exc
