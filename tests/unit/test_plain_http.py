"""aiohttp imported without reading CA certificates (plain_http.py), in the agent and
in a proxy slot, and the environment as it was once it has imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kubernetes_standin import _tls

PROBE = """
import json, os, ssl
import {module}
import aiohttp.connector
print(json.dumps({{
    "aiohttp": aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "after": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "file": os.environ.get("SSL_CERT_FILE"),
    "dir": os.environ.get("SSL_CERT_DIR", "unset"),
}}))
"""


@pytest.mark.parametrize("module", ["entrypoint.status", "entrypoint.switching.proxy"])
def test_aiohttp_builds_no_certificates_and_later_tls_sees_them(
    tmp_path: Path, module: str
) -> None:
    _tls(tmp_path)  # writes ca.crt: one CA
    ca = tmp_path / "ca.crt"
    env = {**os.environ, "SSL_CERT_FILE": str(ca)}
    env.pop("SSL_CERT_DIR", None)
    found = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(found.stdout)
    assert seen == {"aiohttp": 0, "after": 1, "file": str(ca), "dir": "unset"}
