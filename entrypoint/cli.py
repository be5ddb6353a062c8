"""Command line: the only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from entrypoint import __version__
from entrypoint.config import (
    Settings,
    load_settings,
    scrub_environ,
    split_urls,
    status_url,
    url_secrets,
)
from entrypoint.errors import AppFailed, ConfigError, LivePullError, StartupFailed
from entrypoint.homelock import HomeLock
from entrypoint.logs import Masker, append_to_output_files, configure_logging, json_output
from entrypoint.quickstart import taken_over
from entrypoint.relay import app_output

if TYPE_CHECKING:
    import requests

log = logging.getLogger("entrypoint")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_APP_FAILED = 3
EXIT_START_FAILED = 4
ROLLBACK_WAIT = 120.0
PAUSE_WAIT = 30.0  # a pause is taken between steps: a long install makes it wait
STATUS_ORDER = (
    "state",
    "revision",
    "ref",
    "repo_url",
    "ready",
    "last_check",
    "last_error",
    "error_kind",
)
# Most specific first: the first class an error is an instance of decides.
FAILURES: tuple[tuple[type[LivePullError], str, int], ...] = (
    (ConfigError, "configuration error", EXIT_CONFIG),
    (AppFailed, "the app cannot stay up", EXIT_APP_FAILED),
    (StartupFailed, "could not start", EXIT_START_FAILED),
    (LivePullError, "error", EXIT_ERROR),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except LivePullError as exc:
        what, code = next((w, c) for kind, w, c in FAILURES if isinstance(exc, kind))
        if json_output():  # LIVE_PULL_LOG_FORMAT=json: the last line is an object too
            log.critical("live-pull: %s: %s exit_code=%d", what, exc, code)
        else:
            print(f"live-pull: {what}: {exc}", file=sys.stderr)
        return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="live-pull", description="Keep a running app in step with its git repository."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="fetch, run and follow the app (the container's command)")
    prepare = commands.add_parser(
        "prepare",
        help="fetch, install and run the release step for the ref, then exit (no app started)",
    )
    prepare.add_argument(
        "--skip-release",
        action="store_true",
        help="leave the release step (e.g. migrations) to the first `run` on this home",
    )
    commands.add_parser("check-config", help="validate and print the effective configuration")
    status = commands.add_parser("status", help="show a running agent's status")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    sync = commands.add_parser("sync", help="ask a running agent to check the remote now")
    sync.add_argument(
        "--now",
        action="store_true",
        help="deploy what the check finds even if paused or outside the update windows",
    )
    pause = commands.add_parser(
        "pause", help="hold updates (checks go on) until `resume`, across restarts"
    )
    pause.add_argument("--reason", help="shown in status and logged")
    commands.add_parser("resume", help="let updates go live again")
    probe = commands.add_parser("probe", help="exit 0 if a running agent's probe passes")
    probe.add_argument("endpoint", choices=["healthz", "readyz"])
    rollback = commands.add_parser(
        "rollback", help="switch a running agent to the previous (or a named) retained release"
    )
    rollback.add_argument("sha", nargs="?", help="a retained release (full or short sha)")
    history = commands.add_parser(
        "history", help="show a running agent's last updates and rollbacks (newest last)"
    )
    history.add_argument("--json", action="store_true", help="print the raw JSON list")
    commands.add_parser("version", help="print the version")
    demo = commands.add_parser("demo", help="run against a sample app and push a commit")
    demo.add_argument(
        "--port", type=int, default=None, help="port for the sample app (default: a free one)"
    )
    handlers = {
        "run": _run,
        "prepare": _prepare,
        "check-config": _check_config,
        "status": _status,
        "sync": _sync,
        "history": _history,
        "probe": _probe,
        "rollback": _rollback,
        "pause": _pause,
        "resume": _resume,
        "version": _version,
        "demo": _demo,
    }
    for name, handler in handlers.items():
        commands.choices[name].set_defaults(handler=handler)
    return parser


def _settings() -> Settings:
    return load_settings()


def _run(args: argparse.Namespace) -> int:
    from entrypoint.boot import boot

    settings = _settings()
    secrets = _secrets_to_mask(settings)
    configure_logging(settings.log_level, secrets, settings.log_format)
    append_to_output_files()
    begun = taken_over(settings.home)
    lock = begun.lock if begun else HomeLock(settings.home)
    try:
        if begun is None:
            lock.acquire()  # before anything in the home is read or written
        scrub_environ(settings)
        output = app_output(settings.log_format, Masker(secrets))
        booted = boot(settings, output, begun)  # supervisord boots while the agent imports
        from entrypoint.agent import Agent

        try:
            agent = Agent(settings, booted)
        except BaseException:
            booted.supervisor.stop()
            output.stop()
            raise
        return agent.run()
    except OSError as exc:
        raise LivePullError(str(exc)) from exc
    finally:
        lock.release()


def _prepare(args: argparse.Namespace) -> int:
    from entrypoint.prepare import prepare

    settings = _settings()
    configure_logging(settings.log_level, _secrets_to_mask(settings), settings.log_format)
    scrub_environ(settings)
    try:
        prepared = prepare(settings, release_step=not args.skip_release)
    except OSError as exc:
        raise LivePullError(str(exc)) from exc
    print(prepared.line())
    return EXIT_OK


def _secrets_to_mask(settings: Settings) -> list[str]:
    """Every secret known at start, masked in the log as a last guard."""
    auth = settings.auth
    found = auth.inline_secrets()
    if settings.notify_urls is not None:
        with contextlib.suppress(LivePullError):
            found.extend(split_urls(settings.notify_urls.read()))
    if settings.fleet_url is not None:
        with contextlib.suppress(LivePullError):
            found.extend(url_secrets(settings.fleet_url.read()))
    if auth.url_credentials is not None:
        found.append(auth.url_credentials.username)
    for secret in (auth.token, auth.password):
        if secret is not None and secret.file is not None:
            with contextlib.suppress(LivePullError):
                found.append(secret.read())
    return found


def _check_config(args: argparse.Namespace) -> int:
    for key, value in _settings().effective().items():
        print(f"{key}={value}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    status = _request("GET", "/status").json()
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    for key in STATUS_ORDER:
        print(f"{key:>16}: {_show(status.get(key))}")
    if status.get("tag"):  # following release tags (REPO_REF=semver:...)
        print(f"{'tag':>16}: {status['tag']}")
    print(f"{'updates':>16}: {status.get('updates', 0)}")
    down = status.get("app_down")
    if down:
        print(f"{'app down':>16}: {down['program']} ({down['restarts']} restarts)")
    _show_hold(status)
    _show_fleet(status.get("fleet"))
    for sha, reason in (status.get("failed_revisions") or {}).items():
        print(f"{'failed':>16}: {sha[:12]} {reason}")
    return EXIT_OK


def _show_fleet(fleet: dict[str, Any] | None) -> None:
    """With a fleet store: the fleet's revision, then one line per replica."""
    if not fleet:
        return
    revision = (fleet.get("revision") or "-")[:12]
    mark = "" if fleet.get("converged") else " (not converged)"
    print(f"{'fleet':>16}: {revision}{mark} through {fleet['store']}, this is {fleet['replica']}")
    if fleet.get("error"):
        print(f"{'fleet error':>16}: {fleet['error']}")
    for replica in fleet.get("replicas") or []:
        stale = " stale" if replica.get("stale") else ""
        sha = (replica.get("revision") or "-")[:12]
        print(f"{'replica':>16}: {replica['name']} {sha} {_show(replica.get('state'))}{stale}")


def _show_hold(status: dict[str, Any]) -> None:
    paused = status.get("paused")
    if paused:
        print(f"{'paused':>16}: since {paused['since']} ({_show(paused.get('reason'))})")
    waiting = status.get("waiting")
    if waiting:
        opens = f", window opens {waiting['next_window']}" if waiting.get("next_window") else ""
        print(f"{'waiting':>16}: {waiting['sha'][:12]} (held by {waiting['held_by']}{opens})")


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def _sync(args: argparse.Namespace) -> int:
    if args.now:
        _request("POST", "/sync?now=1")
        print("check requested; what it finds goes live even if paused or outside the windows")
    else:
        _request("POST", "/sync")
        print("check requested")
    return EXIT_OK


def _pause(args: argparse.Namespace) -> int:
    query = f"?{urlencode({'reason': args.reason})}" if args.reason else ""
    _request("POST", f"/pause{query}")
    _wait_for(lambda status: status.get("paused") is not None, "paused", "pause")
    return EXIT_OK


def _resume(args: argparse.Namespace) -> int:
    _request("POST", "/resume")
    _wait_for(lambda status: status.get("paused") is None, "resumed", "resume")
    return EXIT_OK


def _wait_for(done: Callable[[dict[str, Any]], bool], said: str, asked: str) -> None:
    """Until /status shows it done; the loop takes it between steps, so after a while
    say that it is queued (it will be taken) rather than fail."""
    deadline = time.monotonic() + PAUSE_WAIT
    while True:
        status = _request("GET", "/status").json()
        if done(status):
            print(said)
            return
        if time.monotonic() > deadline:
            step = status.get("step") or status.get("state")
            print(f"{asked} requested; the agent takes it once its step ends (step={step})")
            return
        time.sleep(0.3)


def _rollback(args: argparse.Namespace) -> int:
    """Ask, then wait until the agent serves the target or says why it cannot."""
    query = f"?sha={args.sha}" if args.sha else ""
    target = str(_request("POST", f"/rollback{query}").json()["to"])
    print(f"rolling back to {target[:12]}")
    deadline = time.monotonic() + ROLLBACK_WAIT
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = _request("GET", "/status").json()
        rollback = status.get("rollback") or {}
        if rollback.get("to") == target and rollback.get("status") == "failed":
            raise LivePullError(f"rollback to {target[:12]} failed: {rollback.get('error')}")
        if status.get("revision") == target and rollback.get("status") == "done":
            print(f"serving {target[:12]}")
            return EXIT_OK
        time.sleep(0.5)
    raise LivePullError(
        f"rollback to {target[:12]} not done after {ROLLBACK_WAIT:g}s: {status.get('last_error')}"
    )


def _probe(args: argparse.Namespace) -> int:
    """For HEALTHCHECK and exec probes: the endpoint's answer as an exit code."""
    _request("GET", f"/{args.endpoint}")
    return EXIT_OK


def _request(method: str, path: str) -> requests.Response:
    """One call to the running agent; an error answer becomes the agent's own words."""
    import requests  # not on `run`'s way to a serving app

    url = status_url() + path
    try:
        response = requests.request(method, url, timeout=10)
    except requests.RequestException as exc:
        raise LivePullError(f"no live-pull agent answering at {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            error = str(response.json().get("error") or "")
        except ValueError:
            error = ""
        raise LivePullError(error or f"{url} answered HTTP {response.status_code}")
    return response


def _history(args: argparse.Namespace) -> int:
    events = _request("GET", "/history").json()
    if args.json:
        print(json.dumps(events, indent=2))
        return EXIT_OK
    for line in history_table(events):
        print(line)
    return EXIT_OK


HISTORY_COLUMNS = ("WHEN", "KIND", "TRIGGER", "FROM", "TO", "OUTCOME", "TOOK", "REASON")


def history_table(events: list[dict[str, Any]]) -> list[str]:
    """Events as aligned columns for a person, oldest first (the reason last, whole)."""
    rows = [HISTORY_COLUMNS, *(_history_row(event) for event in events)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HISTORY_COLUMNS) - 1)]
    return ["  ".join([*map(str.ljust, row[:-1], widths), row[-1]]).rstrip() for row in rows]


def _history_row(event: dict[str, Any]) -> tuple[str, ...]:
    took = event.get("duration_seconds")
    to = _sha(event.get("to_revision"))
    if event.get("to_subject"):
        to = f"{to} {str(event['to_subject'])[:40]}"
    return (
        str(event.get("at", "-"))[:19].replace("T", " "),
        _show(event.get("kind")),
        _show(event.get("trigger")),
        _sha(event.get("from_revision")),
        to,
        _show(event.get("outcome")),
        "-" if took is None else f"{took:.1f}s",
        _show(event.get("reason")),
    )


def _sha(value: Any) -> str:
    return str(value)[:12] if value else "-"


def _version(args: argparse.Namespace) -> int:
    print(f"live-pull {__version__}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from entrypoint.demo import run_demo

    return run_demo(args.port)
