"""One error hierarchy: third-party errors are mapped to these where they enter."""


class LivePullError(Exception):
    """Base of every error live-pull raises on purpose."""


class ConfigError(LivePullError):
    """A setting is missing or invalid; the message names the variable."""


class GitError(LivePullError):
    """A git operation failed (remote unreachable, ref missing, damaged repository)."""


class RefNotFound(GitError):
    """The remote has no ref by the configured name."""


class RevisionError(LivePullError):
    """A revision cannot be run: bad Procfile, failed release step, app never came up."""


class SupervisorError(LivePullError):
    """supervisord could not be started or answered an XML-RPC call with a fault."""


class AppFailed(LivePullError):
    """The app cannot stay up: one of its programs went FATAL."""


class StartupFailed(LivePullError):
    """No revision could be fetched within the start timeout and none is on disk."""


class InstallError(RevisionError):
    """The revision's dependencies could not be installed."""


class CommandFailed(LivePullError):
    """A one-off command exited non-zero; carries the last lines of its output."""

    def __init__(self, code: int, tail: list[str]) -> None:
        self.code = code
        self.tail = tail
        super().__init__(f"code={code}: {' | '.join(tail) or 'no output'}")

    def as_revision_error(self, what: str) -> RevisionError:
        return RevisionError(f"{what} failed {self}")


class RevisionRefused(RevisionError):
    """The revision is not signed by an allowed key; it is never deployed."""

    def __init__(self, sha: str, reason: str) -> None:
        self.sha = sha
        super().__init__(f"refused {sha[:12]}: {reason}")
