"""The repository URL: which transports are allowed, and keeping its credentials secret.

Credentials embedded in an http(s) URL are split off at load time. git only ever
sees the bare URL; a credential helper reads the secret from a mode-0600 file, so
the secret never reaches an argv, a log line, `/status` or the app.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

NETWORK_SCHEMES = frozenset({"https", "http", "ssh", "git"})
SCP_STYLE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*)$")
REDACTED = "***"


@dataclass(frozen=True)
class HttpCredentials:
    username: str = field(repr=False)
    password: str = field(repr=False)


@dataclass(frozen=True)
class RepoUrl:
    """A validated REPO_URL: what git is given, and the secret kept apart from it."""

    url: str
    credentials: HttpCredentials | None = field(default=None, repr=False)

    @property
    def is_file(self) -> bool:
        return self.url.startswith("file://")

    @property
    def file_path(self) -> str | None:
        """The path git opens for a file:// URL (percent-decoded, host ignored, as git does)."""
        if not self.is_file:
            return None
        return unquote(urlsplit(self.url).path).rstrip("/") or "/"

    def redacted(self) -> str:
        if self.credentials is None:
            return self.url
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(netloc=f"{REDACTED}@{parts.netloc}"))


def parse_repo_url(raw: str) -> RepoUrl:
    """Validate a REPO_URL; raise ValueError naming what is wrong (never echoing a secret)."""
    raw = raw.strip()
    if not raw:
        raise ValueError("must not be empty")
    if "://" not in raw:
        return _parse_scp_style(raw)
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if not parts.path:
            raise ValueError("file:// URL has no path")
        return RepoUrl(raw)
    if scheme not in NETWORK_SCHEMES:
        raise ValueError(f"transport {scheme!r} is not allowed (use https, http, ssh, git or file)")
    if not parts.hostname:
        raise ValueError("URL has no host")
    return _split_credentials(parts, scheme)


def _parse_scp_style(raw: str) -> RepoUrl:
    if "::" in raw or not SCP_STYLE.match(raw):
        raise ValueError(
            "is neither a URL (https, http, ssh, git, file) nor scp-style user@host:path"
        )
    return RepoUrl(raw)


def _split_credentials(parts: SplitResult, scheme: str) -> RepoUrl:
    if parts.username is None and parts.password is None:
        return RepoUrl(urlunsplit(parts))
    if scheme not in ("https", "http"):
        if parts.password is not None:
            raise ValueError(f"passwords in {scheme} URLs are not supported")
        return RepoUrl(urlunsplit(parts))
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit(parts._replace(netloc=host))
    secret = HttpCredentials(unquote(parts.username or ""), unquote(parts.password or ""))
    return RepoUrl(bare, secret)


def credential_origin(url: RepoUrl) -> str | None:
    """`scheme://host[:port]` of an http(s) REPO_URL: the one place git may send the
    credentials to (None for other transports, which take none from a helper)."""
    parts = urlsplit(url.url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_http_elsewhere(url: RepoUrl) -> bool:
    """Credentials for this URL would cross the network unencrypted."""
    parts = urlsplit(url.url)
    return parts.scheme.lower() == "http" and not is_loopback(parts.hostname or "")


def credential_helper_config(path: Path, origin: str) -> dict[str, str]:
    """Environment that makes git answer credential requests from `path`, and only for
    `origin` (REPO_URL's scheme, host and port): a submodule, or a redirect, to any
    other place asks and gets nothing.

    Passed as GIT_CONFIG_* variables so nothing lands in the repository's config;
    the first, empty `credential.helper` drops any helper configured elsewhere.
    """
    helper = f"!f() {{ test \"$1\" = get && cat '{path}'; }}; f"
    return {
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": f"credential.{origin}.helper",
        "GIT_CONFIG_VALUE_1": helper,
    }
