"""Notifications through Apprise (Slack, Discord, JSON, ...): one message per event.

Sending never holds up an update: events go on a bounded queue (a full queue drops
the newest, with a warning) and one background thread sends them, each service
within Apprise's own connect and read timeouts; a failed send is a warning. Apprise
is heavy to import: only this module imports it, and only when URLs are configured.
The URLs hold tokens: they are never logged (a service is named by its scheme).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from entrypoint.events import FAILED, ROLLED_BACK, SUCCEEDED, Event, Sink

if TYPE_CHECKING:
    import apprise

log = logging.getLogger(__name__)

EVENTS = ("failure", "rollback", "success", "start")
DEFAULT_EVENTS = ("failure", "rollback")
QUEUE_SIZE = 100
CLOSE_SECONDS = 5.0  # at agent stop, what is queued gets this long to go out
_TOPICS = {FAILED: "failure", ROLLED_BACK: "rollback", SUCCEEDED: "success"}
_STOP = None


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    level: str  # info, success, warning, failure (Apprise's notify types)


def unusable(urls: Sequence[str]) -> tuple[int, str] | None:
    """The first URL Apprise cannot send to, as (1-based position, scheme); None if all
    can be. The URL itself is never part of the answer."""
    for position, url in enumerate(urls, 1):
        if _service(url) is None:
            return position, scheme_of(url)
    return None


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "?"


class Notifier(Sink):
    """`urls` gives the Apprise URLs at every send (a secret file may be rotated)."""

    def __init__(
        self, urls: Callable[[], Sequence[str]], on: Sequence[str], repo: str, ref: str
    ) -> None:
        self.urls = urls
        self.on = frozenset(on)
        self.repo = repo
        self.ref = ref
        logging.getLogger("apprise").setLevel(logging.WARNING)  # its debug lines show URLs
        # The failure said last: a fault that outlasts its retries (a remote down, a full
        # disk) is said once, not at every retry, until something else happens.
        self._last_failure: tuple[str | None, ...] | None = None
        self._known: tuple[str, ...] = ()
        self._services: list[tuple[str, apprise.Apprise | None]] = []
        self._queue: queue.Queue[Message | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._send_forever, name="notify", daemon=True)
        self._thread.start()

    # -- the Sink -------------------------------------------------------------------------

    def starting(self, event: Event) -> None:
        if "start" in self.on:
            self._put(self.message(event, "start"))

    def record(self, event: Event) -> None:
        topic = _TOPICS.get(event.outcome or "")
        if topic is None or self._said_before(event, topic):
            return
        if topic in self.on:
            self._put(self.message(event, topic))

    def _said_before(self, event: Event, topic: str) -> bool:
        failure = (event.kind, event.to_revision, event.reason) if topic == "failure" else None
        again = failure is not None and failure == self._last_failure
        self._last_failure = failure
        if again:
            log.info("the same failure again, not notified reason=%s", event.reason)
        return again

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Let what is queued go out, for `timeout` seconds at most."""
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)

    # -- the message --------------------------------------------------------------------

    def message(self, event: Event, topic: str) -> Message:
        sha = (event.to_revision or "")[:12] or "-"
        what = "rollback" if event.kind == "rollback" else "update"
        titles = {
            "start": (f"updating to {sha}", "info"),
            "success": (f"{sha} is live", "success"),
            "rollback": (f"rolled back to {sha}", "warning"),
            "failure": (f"{what} to {sha} failed", "failure"),
        }
        title, level = titles[topic]
        return Message(f"live-pull: {title}", "\n".join(self._lines(event)), level)

    def _lines(self, event: Event) -> Iterator[str]:
        if event.to_revision:
            by = f" ({event.author})" if event.author else ""
            yield f"commit: {event.to_revision[:12]} {event.to_subject or ''}{by}".rstrip()
        yield f"repository: {self.repo} ({self.ref})"
        if event.outcome is not None:
            yield f"outcome: {event.outcome} (trigger: {event.trigger or '-'})"
        if event.reason:
            yield f"reason: {event.reason}"
        if event.from_revision:
            yield f"previous: {event.from_revision[:12]} {event.from_subject or ''}".rstrip()
        if event.duration_seconds is not None:
            yield f"took: {event.duration_seconds:.1f}s"

    # -- the thread -----------------------------------------------------------------------

    def _put(self, message: Message) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            log.warning("notification dropped, queue full title=%s", message.title)

    def _send_forever(self) -> None:
        while (message := self._queue.get()) is not None:
            for scheme, service in self._current():
                self._send(scheme, service, message)

    def _current(self) -> list[tuple[str, apprise.Apprise | None]]:
        """The services for the URLs as they are now (parsed again only if changed)."""
        try:
            urls = tuple(self.urls())
        except Exception as exc:  # a secret file gone: keep the URLs read last
            log.warning("notification URLs unreadable, using the last ones error=%s", exc)
            return self._services
        if urls != self._known:
            self._known = urls
            self._services = [(scheme_of(url), _service(url)) for url in urls]
        return self._services

    def _send(self, scheme: str, service: apprise.Apprise | None, message: Message) -> None:
        try:
            sent = service is not None and bool(
                service.notify(body=message.body, title=message.title, notify_type=message.level)
            )
        except Exception as exc:
            log.warning("notification not sent service=%s error=%s", scheme, type(exc).__name__)
            return
        if not sent:
            log.warning("notification not sent service=%s title=%s", scheme, message.title)


def _service(url: str) -> apprise.Apprise | None:
    """An Apprise object for one URL; None if Apprise cannot parse it. Apprise's own
    complaint is silenced: it would quote the URL."""
    import apprise

    service = apprise.Apprise()
    with _quiet("apprise"):
        added = service.add(url)
    return service if added else None


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was
