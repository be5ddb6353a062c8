"""The first moves of `live-pull run`, made before the rest of the agent is imported:
who the app runs as, and supervisord started, so that it boots while Python imports
the agent's HTTP, git and dependency code (agent.py)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from entrypoint import identity
from entrypoint.config import Settings
from entrypoint.errors import ConfigError
from entrypoint.identity import Identity
from entrypoint.processes import home_id, read_app_processes_as, tag_children
from entrypoint.quickstart import Begun, end, why_not
from entrypoint.relay import AppOutput, Inherited
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import Timings

log = logging.getLogger(__name__)

# What in LIVE_PULL_HOME the app user may write (see separate).
APP_OWNED = frozenset({"shared", "scratch", "cache"})


@dataclass(frozen=True)
class Booted:
    run_as: Identity
    supervisor: Supervisor  # spawned; Agent.run waits until it answers
    output: AppOutput  # started; stopped after supervisord (see relay.py)


def boot(settings: Settings, output: AppOutput | None = None, begun: Begun | None = None) -> Booted:
    """From the main thread, holding the home's lock (see Supervisor.spawn).
    `output`: where supervisord and the app write, started here; `begun`: the quick
    start's supervisord, taken over (quickstart.py)."""
    output = output or Inherited()
    log.info("live-pull starting repo=%s ref=%s", settings.repo_url.redacted(), settings.ref_label)
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        run_as = separate(settings, begun.release if begun else None)
    except BaseException:
        if begun is not None:  # what it began stops in order, not by the agent's death
            end(begun)
        raise
    timings = Timings(settings.start_seconds, settings.start_retries, settings.stop_timeout)
    process_home = home_id(settings.home)
    tag_children(process_home)
    socket = begun.socket if begun else None
    supervisor = Supervisor(settings.home / "run", timings, process_home, run_as, output, socket)
    output.start()
    if begun is None and why_not() is not None:
        log.info("no quick start: %s", why_not())
    if begun is not None:
        log.info("taking over the quick start: supervisord pid=%d", begun.process.pid)
        supervisor.adopt(begun.process, begun.password)
        return Booted(run_as, supervisor, output)
    try:
        supervisor.spawn()
    except BaseException:
        output.stop()
        raise
    return Booted(run_as, supervisor, output)


def _interpreter() -> Path:
    return Path(sys.executable).resolve().parent


def separate(settings: Settings, running: Path | None = None) -> Identity:
    """Who code from the repository runs as; said once, at start, when that is the
    agent itself. The home is the agent's; the app may only pass through it, and write
    the release it runs (`running`: the one a quick start began, which it keeps)."""
    run_as = identity.resolve(settings.app_user)
    notice = identity.notice(settings.app_user, run_as)
    if notice is not None:
        log.warning("%s", notice)
    if run_as.app is None:
        return run_as
    run_as.claim_home(settings.home, APP_OWNED, running)
    for variable, path in settings.secret_files().items():
        if run_as.can_read(path):
            log.warning(
                "%s %s is readable by the app user %s: mount it mode 0400 (root's alone)",
                variable,
                path,
                run_as.app.name,
            )
    # The app user runs the agent's interpreter too (the wrapper of one-off commands,
    # the slot launcher), and must pass through to its releases and environments.
    for what, path in (("LIVE_PULL_HOME", settings.home), ("python", _interpreter())):
        blocked = run_as.blocked_on_the_way(path)
        if blocked is not None:
            raise ConfigError(
                f"LIVE_PULL_APP_USER: user {run_as.app.name} cannot reach {what} {path}"
                f" ({blocked} is not searchable by it)"
            )
    run_as.private_dir(settings.home / "repo")
    read_app_processes_as(run_as.app.uid, run_as.app.gid)
    log.info(
        "privilege separation on: code from the repository runs as user=%s uid=%d",
        run_as.app.name,
        run_as.app.uid,
    )
    return run_as
