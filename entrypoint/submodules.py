"""Submodules, opt-in (LIVE_PULL_SUBMODULES): each is fetched at the commit the
revision records, shallow, into a cache repository of its own, and exported into
the release. Same transport rules and credentials as the main repository.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from entrypoint.credentials import RepoUrl, credential_origin, parse_repo_url
from entrypoint.errors import RevisionError


@dataclass(frozen=True)
class Submodule:
    name: str
    path: str
    url: str  # as written in .gitmodules; may be relative to the main repository


def parse_gitmodules(config_lines: str) -> list[Submodule]:
    """From `git config --get-regexp` output over .gitmodules."""
    paths: dict[str, str] = {}
    urls: dict[str, str] = {}
    for line in config_lines.splitlines():
        key, _, value = line.partition(" ")
        if not key.startswith("submodule."):
            continue
        name, _, field = key[len("submodule.") :].rpartition(".")
        (paths if field == "path" else urls)[name] = value.strip()
    return [Submodule(name, paths[name], urls[name]) for name in sorted(paths) if name in urls]


def resolve_url(parent: RepoUrl, url: str) -> RepoUrl:
    """A submodule URL, relative ones resolved against the main repository's URL, then
    held to the same rules: allowed transports only, file only beside a file remote."""
    if url.startswith(("./", "../")):
        url = _join(parent.url, url)
    try:
        resolved = parse_repo_url(url)
    except ValueError as exc:
        raise RevisionError(f"submodule URL refused: {exc}") from exc
    if resolved.is_file and not parent.is_file:
        raise RevisionError("submodule URL refused: file:// only when REPO_URL is file://")
    # Credentials in a submodule URL are dropped; REPO_URL's reach only its own origin
    # (the credential helper is scoped to it, see credentials.credential_helper_config).
    return RepoUrl(resolved.url)


def credentials_note(parent: RepoUrl, url: RepoUrl) -> str:
    """Why a submodule elsewhere may have been refused: it got no credentials."""
    here, there = credential_origin(parent), credential_origin(url)
    if here is None or here == there:
        return ""
    return f" (it gets no credentials: only {here} does)"


def cache_name(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _join(base: str, relative: str) -> str:
    if "://" in base:
        parts = urlsplit(base)
        path = posixpath.normpath(posixpath.join(parts.path.rstrip("/"), relative))
        return urlunsplit(parts._replace(path=path))
    host, _, path = base.partition(":")  # scp-style user@host:path
    return f"{host}:{posixpath.normpath(posixpath.join(path.rstrip('/'), relative))}"
