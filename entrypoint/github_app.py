"""GitHub App authentication: an installation token, obtained with a JWT signed by
the app's private key, cached, and renewed before it expires.

The key file is re-read at every renewal, so a rotated Secret works. The base URL
is configurable for GitHub Enterprise Server (https://ghe.example/api/v3).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from entrypoint.errors import GitError

if TYPE_CHECKING:  # imported where used: only an agent with a GitHub App needs them
    import requests
    from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

RENEW_BEFORE = 300.0  # seconds before expiry that a token counts as stale
JWT_LIFETIME = 540  # GitHub accepts at most 10 minutes
CLOCK_SKEW = 60


@dataclass(frozen=True)
class GitHubAppSettings:
    app_id: str
    private_key_file: Path
    installation_id: str
    api_url: str = "https://api.github.com"


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float  # epoch seconds


class GitHubApp:
    def __init__(self, settings: GitHubAppSettings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._token: _Token | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        """A valid installation token, renewed when it expires within RENEW_BEFORE."""
        with self._lock:
            if self._token is None or self._token.expires - time.time() < RENEW_BEFORE:
                self._token = self._request_token()
            return self._token.value

    def _request_token(self) -> _Token:
        import requests

        s = self.settings
        url = f"{s.api_url.rstrip('/')}/app/installations/{s.installation_id}/access_tokens"
        headers = {
            "Authorization": f"Bearer {self._jwt()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        try:
            response = requests.post(url, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise GitError(f"GitHub App token request failed: {exc}") from exc
        if response.status_code != 201:
            message = _message(response)
            raise GitError(
                f"GitHub App token request failed: HTTP {response.status_code} {message}"
            )
        body = response.json()
        expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
        log.info("GitHub App installation token obtained expires_in=%.0fs", expires - time.time())
        return _Token(body["token"], expires)

    def _jwt(self) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT"}
        claims = {"iat": now - CLOCK_SKEW, "exp": now + JWT_LIFETIME, "iss": self.settings.app_id}
        signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        signature = self._private_key().sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{_b64(signature)}"

    def _private_key(self) -> rsa.RSAPrivateKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        try:
            key = serialization.load_pem_private_key(
                self.settings.private_key_file.read_bytes(), password=None
            )
        except (OSError, ValueError) as exc:
            raise GitError(f"LIVE_PULL_GITHUB_APP_PRIVATE_KEY_FILE unusable: {exc}") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise GitError("LIVE_PULL_GITHUB_APP_PRIVATE_KEY_FILE is not an RSA private key")
        return key


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", ""))
    except ValueError:
        return response.text[:200]
