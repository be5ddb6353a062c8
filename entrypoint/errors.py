"""One error hierarchy: third-party errors are mapped to these where they enter.

Errors are sorted by what the control loop does with them:

    LivePullError
    ├── TransientError          back off, retry; the serving revision stays
    │   ├── GitError            the remote failed (network, credentials, RefNotFound)
    │   │   └── LocalGitError   ... or git failed here (a damaged repository is rebuilt)
    │   │       └── GitDiskError    git could not write (also a LocalFault)
    │   ├── SupervisorError     supervisord refused or did not answer
    │   └── LocalFault          LIVE_PULL_HOME is full, read-only or failing
    ├── RevisionError           this revision is rejected: recorded as failed and
    │   ├── InstallError        skipped until the ref moves
    │   └── RevisionRefused
    ├── FatalError              the agent exits with the error's code
    │   ├── ConfigError         2
    │   ├── AppFailed           3: the app cannot be kept up
    │   ├── StartupFailed       4: nothing fetched at start, nothing on disk
    │   └── AnotherAgent        1: another agent owns this home
    └── CommandFailed           a one-off command's exit; callers map it to one above

Anything else raised inside the loop (an OSError, a bug) is "unexpected": logged
with its traceback, shown in /status, backed off, and the loop goes on.
"""

import errno


class LivePullError(Exception):
    """Base of every error live-pull raises on purpose."""


class TransientError(LivePullError):
    """Worth retrying later as it is: nothing says the revision is bad."""


class FatalError(LivePullError):
    """The agent cannot go on; the CLI turns it into the exit code."""


class LocalFault(TransientError):
    """The state directory cannot be written (full, read-only, I/O error)."""


# errno values that say "the disk", not "the revision".
LOCAL_FAULT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})


def is_local_fault(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in LOCAL_FAULT_ERRNOS


class ConfigError(FatalError):
    """A setting is missing or invalid; the message names the variable."""


class GitError(TransientError):
    """A git operation failed (remote unreachable, ref missing, damaged repository)."""


class RefNotFound(GitError):
    """The remote has no ref by the configured name."""


class RevisionError(LivePullError):
    """A revision cannot be run: bad Procfile, failed release step, app never came up."""


class SupervisorError(TransientError):
    """supervisord could not be started or answered an XML-RPC call with a fault."""


class OutOfResources(SupervisorError):
    """The agent itself could not make the call (no file descriptor, no memory): not
    the app's fault, never a reason to stop it. Reported and retried."""


class AppFailed(FatalError):
    """The app cannot stay up: one of its programs went FATAL."""


class StartupFailed(FatalError):
    """No revision could be fetched within the start timeout and none is on disk."""


class InstallError(RevisionError):
    """The revision's dependencies could not be installed."""


class CommandFailed(LivePullError):
    """A one-off command exited non-zero; carries the last lines of its output."""

    def __init__(self, code: int, tail: list[str]) -> None:
        self.code = code
        self.tail = tail  # for the log only: output may hold anything the command read
        ended = (tail[-1] if tail else "").startswith("killed:")
        reason = f"{tail[-1]}; " if ended else ""
        super().__init__(f"code={code} ({reason}output in the log)")

    def as_revision_error(self, what: str) -> RevisionError:
        return RevisionError(f"{what} failed {self}")


class RevisionRefused(RevisionError):
    """The revision is not signed by an allowed key; it is never deployed."""

    def __init__(self, sha: str, reason: str) -> None:
        self.sha = sha
        super().__init__(f"refused {sha[:12]}: {reason}")


class LocalGitError(GitError):
    """git failed on this machine, not at the remote: the local repository or its disk."""


class GitDiskError(LocalGitError, LocalFault):
    """git could not write: the disk is full, read-only, over quota or failing."""


class AnotherAgent(FatalError):
    """Another agent holds this LIVE_PULL_HOME's lock; exit 1 and touch nothing."""
