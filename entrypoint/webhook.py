"""Push triggers: POST /webhook from GitHub, GitLab, Gitea/Forgejo or anything that
sends a bearer token. A verified push to the tracked ref asks for a check now; the
payload is trusted for nothing else (the remote is asked as usual).

Header names are matched in any case (HTTP/2 proxies lowercase them); header values
are compared as the bytes that came over the wire, whatever they hold.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from entrypoint.auth import Secret
from entrypoint.errors import GitError

MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Reply:
    code: int
    body: dict[str, str]


class Webhook:
    def __init__(
        self,
        secret: Secret | None,
        tracked_ref: Callable[[], str | None],
        on_push: Callable[[], None],
    ) -> None:
        self.secret = secret
        self.tracked_ref = tracked_ref
        self.on_push = on_push

    def handle(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one delivery at once; the check itself happens in the background.

        No rate limit: a flood of bad deliveries must never make a good one wait or
        fail, and verified ones only ask for a check, which the inbox coalesces and
        spaces (see Inbox.hold_checks)."""
        headers = {name.lower(): value for name, value in headers.items()}
        if self.secret is None:
            return Reply(404, {"error": "webhook not configured"})
        try:
            secret = self.secret.read().encode()
        except GitError:
            return Reply(503, {"error": "webhook secret unreadable"})
        if not secret or not _verified(headers, body, secret):
            return Reply(401, {"error": "bad or missing signature"})
        event = _event(headers)
        if event not in ("push", "Push Hook", "Tag Push Hook", None):
            return Reply(200, {"ignored": f"event {event}"})
        pushed = _pushed_ref(body)
        tracked = self.tracked_ref()
        if pushed is not None and tracked is not None and pushed != tracked:
            return Reply(200, {"ignored": f"push to {pushed}, tracking {tracked}"})
        self.on_push()
        return Reply(202, {"check": "requested"})


def _verified(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """`headers` keyed by lowercase name. Every comparison is of bytes, in constant time."""
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    github = headers.get("x-hub-signature-256")
    if github is not None:
        return hmac.compare_digest(_wire_bytes(github.strip()), b"sha256=" + digest)
    gitea = headers.get("x-gitea-signature") or headers.get("x-forgejo-signature")
    if gitea is not None:
        return hmac.compare_digest(_wire_bytes(gitea.strip()), digest)
    gitlab = headers.get("x-gitlab-token")
    if gitlab is not None:
        return hmac.compare_digest(_wire_bytes(gitlab), secret)
    bearer = headers.get("authorization", "")
    if bearer.startswith("Bearer "):
        return hmac.compare_digest(_wire_bytes(bearer[len("Bearer ") :].strip()), secret)
    return False


def _wire_bytes(value: str) -> bytes:
    """A header value as the bytes that were sent: http.server decodes them as latin-1.
    A value that cannot have come that way (a caller's own str) is taken as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _event(headers: Mapping[str, str]) -> str | None:
    for name in ("x-github-event", "x-gitlab-event", "x-gitea-event", "x-forgejo-event"):
        if name in headers:
            return headers[name]
    return None


def _pushed_ref(body: bytes) -> str | None:
    try:
        payload = json.loads(body) if body.strip() else {}
    except ValueError:
        return None
    ref = payload.get("ref") if isinstance(payload, dict) else None
    return ref if isinstance(ref, str) else None
