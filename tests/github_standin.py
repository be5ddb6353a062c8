"""A local stand-in for GitHub's installation-token endpoint, on 127.0.0.1.

It checks the app's JWT (RS256 signature with the app's public key, issuer,
lifetime) and issues short-lived tokens, telling the git server each new one.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class GitHubStandIn:
    def __init__(
        self,
        public_key: rsa.RSAPublicKey,
        app_id: str,
        installation_id: str,
        lifetime: float,
        on_token: Callable[[str], None],
    ) -> None:
        self.public_key = public_key
        self.app_id = app_id
        self.installation_id = installation_id
        self.lifetime = lifetime
        self.on_token = on_token
        self.issued: list[str] = []
        self.refused = 0
        self._counter = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> GitHubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def valid(self, authorization: str) -> bool:
        if not authorization.startswith("Bearer "):
            return False
        header, claims, signature = authorization[len("Bearer ") :].split(".")
        try:
            self.public_key.verify(
                _unb64(signature),
                f"{header}.{claims}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return False
        body = json.loads(_unb64(claims))
        now = time.time()
        return body["iss"] == self.app_id and body["iat"] <= now < body["exp"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                expected = f"/app/installations/{standin.installation_id}/access_tokens"
                if self.path != expected or not standin.valid(
                    self.headers.get("Authorization", "")
                ):
                    standin.refused += 1
                    self._reply(401, {"message": "Bad credentials"})
                    return
                token = f"ghs_standin_{next(standin._counter):04d}"
                standin.issued.append(token)
                standin.on_token(token)
                expires = datetime.fromtimestamp(time.time() + standin.lifetime, UTC)
                self._reply(
                    201, {"token": token, "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
                )

            def _reply(self, code: int, body: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
