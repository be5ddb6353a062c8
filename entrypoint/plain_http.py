"""aiohttp as live-pull uses it: plain HTTP only (the status server, and the proxy
on 127.0.0.1), imported without the TLS contexts it would build for nothing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

CERTIFICATE_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


@contextlib.contextmanager
def no_certificates() -> Iterator[None]:
    """aiohttp builds its client's TLS contexts as it is imported, reading the system's
    CA certificates (40 ms and 2 MB on these machines): live-pull speaks plain HTTP
    through it and needs none, so they are read from an empty file while it imports.

    Only where no other thread starts a process meanwhile (it would inherit the empty
    file): the slot's launcher, and the agent before its loop runs (the output relay's
    threads start none). The agent's own TLS (git, requests) is set up after. aiohttp's
    own verified context then holds no CA for the life of the process: nothing here may
    use aiohttp's client over TLS (the proxy's is plain HTTP to 127.0.0.1)."""
    saved = {name: os.environ.get(name) for name in CERTIFICATE_VARIABLES}
    os.environ.update(dict.fromkeys(CERTIFICATE_VARIABLES, os.devnull))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
