"""state.json: what survives a restart (last good revision, history, failures).

The file is a cache of what the home holds, not the only record of it: when it is
missing, unreadable or of the wrong shape, the state is rebuilt from the release
directories and the `current` link, with one warning, and the agent starts as usual.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from entrypoint.files import remove_path, write_atomic

log = logging.getLogger(__name__)

MAX_FAILED = 20
SHA = re.compile(r"[0-9a-f]{40}")

Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
# An environment digest names a directory under venvs/: hex only, never a path.
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8,64}$")]
EnvironmentOf = Callable[[str], str | None]  # sha -> environment digest, if it can be told


@dataclass
class Paused:
    """An operator's pause: updates wait until resumed (see UpdateGate)."""

    reason: str | None
    since: str  # ISO 8601, UTC


@dataclass
class State:
    last_good: str | None = None
    history: list[str] = field(default_factory=list)  # activated revisions, newest last
    failed: dict[str, str] = field(default_factory=dict)  # sha -> reason
    environments: dict[str, str] = field(default_factory=dict)  # sha -> environment digest
    paused: Paused | None = None  # kept across restarts; lost only with state.json itself
    # Prepared with `live-pull prepare --skip-release`: the release step runs at first start.
    unreleased: list[str] = field(default_factory=list)
    # On probation (LIVE_PULL_BAKE_SECONDS) when last saved: a start bakes it again.
    baking: str | None = None

    def record_good(self, sha: str, environment: str | None) -> None:
        self.last_good = sha
        if environment is not None:
            self.environments[sha] = environment
        self.history = [s for s in self.history if s != sha] + [sha]
        self.failed.pop(sha, None)
        self.released(sha)

    def record_unreleased(self, sha: str) -> None:
        """Good to serve once its release step has run (see Updater.start_from_disk)."""
        if sha not in self.unreleased:
            self.unreleased.append(sha)

    def released(self, sha: str) -> None:
        self.unreleased = [s for s in self.unreleased if s != sha]

    def record_failed(self, sha: str, reason: str) -> None:
        self.failed[sha] = reason
        while len(self.failed) > MAX_FAILED:
            self.failed.pop(next(iter(self.failed)))

    def retained(self, keep: int) -> list[str]:
        """The newest `keep` revisions brought live."""
        return self.history[-keep:]

    def forget_all_but(self, kept: list[str]) -> None:
        """Drop what is known of revisions no longer retained."""
        self.history = [sha for sha in self.history if sha in kept]
        self.environments = {sha: d for sha, d in self.environments.items() if sha in kept}
        self.unreleased = [sha for sha in self.unreleased if sha in kept]


class _StoredPause(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    reason: str | None = None
    since: str


class _Stored(BaseModel):
    """The shape of state.json: strict types, unknown keys ignored (newer versions)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    last_good: Sha | None = None
    history: list[Sha] = []
    failed: dict[Sha, str] = {}
    environments: dict[Sha, Digest] = {}
    paused: _StoredPause | None = None
    unreleased: list[Sha] = []
    baking: Sha | None = None

    def to_state(self) -> State:
        paused = Paused(self.paused.reason, self.paused.since) if self.paused else None
        return State(
            self.last_good,
            list(self.history),
            dict(self.failed),
            dict(self.environments),
            paused,
            list(self.unreleased),
            self.baking,
        )


class StateFile:
    """state.json in the home; `releases_root` and `current_link` are what it is rebuilt
    from (by default `releases/` and `current` beside it, the home's layout)."""

    def __init__(
        self, path: Path, releases_root: Path | None = None, current_link: Path | None = None
    ) -> None:
        self.path = path
        self.releases_root = releases_root or path.parent / "releases"
        self.current_link = current_link or path.parent / "current"

    def load(self, environment_of: EnvironmentOf | None = None) -> State:
        """The saved state, or, when there is none worth having, one rebuilt from disk.

        `environment_of(sha)` gives the environment digest of a release on disk, if it
        can be worked out (the updater can: it is the digest of the release's lockfile);
        without it a rebuilt state knows no environments, so the next garbage collection
        keeps only the running revision's, and a rollback reinstalls.
        """
        try:
            return _Stored.model_validate_json(self.path.read_bytes(), strict=True).to_state()
        except FileNotFoundError:
            problem = "missing"
        except OSError as exc:
            problem = f"unreadable ({exc.strerror or exc})"
        except ValidationError as exc:
            problem = _summary(exc)
        return self._rebuild(problem, environment_of)

    def save(self, state: State) -> None:
        """Replace state.json atomically. An OSError (read-only, disk full, path taken by a
        directory) propagates with state.json as its filename; no partial file is left."""
        try:
            if self.path.is_dir() and not self.path.is_symlink():
                remove_path(self.path)  # in the way of the file, and holds nothing of ours
            write_atomic(self.path, json.dumps(asdict(state), indent=2) + "\n")
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write state: {exc.strerror}", str(self.path)) from exc

    # -- rebuilding ------------------------------------------------------------------------

    def _rebuild(self, problem: str, environment_of: EnvironmentOf | None) -> State:
        """last_good from `current`, history from the release directories (oldest first by
        mtime, the current one last); failures are forgotten."""
        current = self._current()
        releases = [sha for sha in self._releases() if sha != current]
        history = [*releases, current] if current is not None else releases
        environments = _environments(history, environment_of)
        if history or problem != "missing":  # a first start has nothing to say
            log.warning(
                "state file %s, rebuilt from releases path=%s last_good=%s releases=%d"
                " environments=%d",
                problem,
                self.path,
                current[:12] if current else None,
                len(history),
                len(environments),
            )
        return State(last_good=current, history=history, environments=environments)

    def _current(self) -> str | None:
        try:
            sha = Path(os.readlink(self.current_link)).name
        except OSError:
            return None
        return sha if SHA.fullmatch(sha) and (self.releases_root / sha).is_dir() else None

    def _releases(self) -> list[str]:
        """Release shas on disk, oldest first (interrupted builds, `.tmp-*`, are not shas)."""
        try:
            children = list(os.scandir(self.releases_root))
        except OSError:
            return []
        found = [
            (child.stat().st_mtime, child.name)
            for child in children
            if SHA.fullmatch(child.name) and child.is_dir(follow_symlinks=False)
        ]
        return [name for _, name in sorted(found)]


def _environments(history: list[str], environment_of: EnvironmentOf | None) -> dict[str, str]:
    if environment_of is None:
        return {}
    found = {sha: environment_of(sha) for sha in history}
    return {sha: digest for sha, digest in found.items() if digest is not None}


def _summary(exc: ValidationError) -> str:
    """One line: the first problem, and how many more."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "top level"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid ({where}: {first['msg']}{more})"
