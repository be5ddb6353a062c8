"""state.json: what survives a restart (last good revision, history, failures)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from entrypoint.files import write_atomic

log = logging.getLogger(__name__)

MAX_FAILED = 20


@dataclass
class State:
    last_good: str | None = None
    history: list[str] = field(default_factory=list)  # activated revisions, newest last
    failed: dict[str, str] = field(default_factory=dict)  # sha -> reason
    environments: dict[str, str] = field(default_factory=dict)  # sha -> environment digest

    def record_good(self, sha: str, environment: str | None) -> None:
        self.last_good = sha
        if environment is not None:
            self.environments[sha] = environment
        self.history = [s for s in self.history if s != sha] + [sha]
        self.failed.pop(sha, None)

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


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> State:
        try:
            data = json.loads(self.path.read_text())
            return State(
                last_good=data.get("last_good"),
                history=list(data.get("history", [])),
                failed=dict(data.get("failed", {})),
                environments=dict(data.get("environments", {})),
            )
        except FileNotFoundError:
            return State()
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # A corrupt state file costs us the rollback history, not the app.
            log.warning("ignoring unreadable state file path=%s error=%s", self.path, exc)
            return State()

    def save(self, state: State) -> None:
        write_atomic(self.path, json.dumps(asdict(state), indent=2))
