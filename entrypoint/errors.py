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
