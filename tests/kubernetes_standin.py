"""A local stand-in for the Kubernetes API's Leases (coordination.k8s.io/v1), on
127.0.0.1 over TLS with a CA of its own, as a pod reaches the real one.

What it keeps of the real API: a bearer token (401 without it), RBAC by verb (403 with
the real message), GET of a Lease or the list, POST (201; 409 AlreadyExists), PUT
(200; 409 Conflict when the resourceVersion sent is not the stored one; 404 for a
missing Lease; 400 when the name differs from the URL's), a resourceVersion bumped at
every write, validation of names, annotation keys and MicroTimes (422), and Status
objects as error bodies.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import re
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PATH = re.compile(
    r"/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[a-z0-9-]+)/leases(?:/(?P<name>[^/?]+))?"
)
NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
KEY_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
VERBS = {"GET": "get", "POST": "create", "PUT": "update"}


class KubernetesStandIn:
    def __init__(self, certs: Path, token: str = "standin-token") -> None:
        self.token = token
        self.forbidden: set[str] = set()  # verbs the service account's Role lacks
        self.failing: int | None = None  # answer every request with this status
        self.requests: list[tuple[str, str]] = []  # (method, lease name)
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.ca_file = certs / "ca.crt"
        self._versions = itertools.count(1000)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = _tls(certs).wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KubernetesStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def stored(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.leases.values())

    # -- the API ---------------------------------------------------------------------

    def answer(
        self, method: str, path: str, token: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        match = PATH.fullmatch(path.split("?")[0])
        if match is None:
            return status(404, "NotFound", "the server could not find the requested resource")
        ns, name = match["ns"], match["name"]
        self.requests.append((method, name or (body or {}).get("metadata", {}).get("name", "")))
        if self.failing is not None:
            return status(self.failing, "InternalError", "etcdserver: request timed out")
        if token != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        if VERBS.get(method) in self.forbidden or method not in VERBS:
            return forbidden(VERBS.get(method, method.lower()), ns, name)
        with self._lock:
            if method == "GET":
                return self._get(ns, name)
            if body is None:
                return status(400, "BadRequest", "the body of the request was empty")
            if method == "POST" and name is None:
                return self._create(ns, body)
            if method == "PUT" and name is not None:
                return self._replace(ns, name, body)
        return status(405, "MethodNotAllowed", f"the server does not allow {method} here")

    def _get(self, ns: str, name: str | None) -> tuple[int, dict[str, Any]]:
        if name is None:
            items = [lease for (space, _), lease in sorted(self.leases.items()) if space == ns]
            return 200, {
                "kind": "LeaseList",
                "apiVersion": "coordination.k8s.io/v1",
                "items": items,
            }
        lease = self.leases.get((ns, name))
        return (200, lease) if lease is not None else not_found(name)

    def _create(self, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        problem = invalid(body) or mismatched_namespace(meta, ns)
        if problem is not None:
            return problem
        if meta.get("resourceVersion"):
            return status(
                400, "BadRequest", "resourceVersion should not be set on objects to be created"
            )
        if (ns, name) in self.leases:
            return status(
                409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists'
            )
        meta.update(
            namespace=ns,
            uid=str(uuid.uuid4()),
            creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        return 201, self._store(ns, name, body)

    def _replace(self, ns: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            return status(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        problem = invalid(body) or mismatched_namespace(meta, ns)
        if problem is not None:
            return problem
        stored = self.leases.get((ns, name))
        if stored is None:
            return not_found(name)
        sent = meta.get("resourceVersion")
        if sent and sent != stored["metadata"]["resourceVersion"]:
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the'
                " object has been modified; please apply your changes to the latest version"
                " and try again",
            )
        for kept in ("uid", "creationTimestamp"):
            meta[kept] = stored["metadata"][kept]
        meta["namespace"] = ns
        return 200, self._store(ns, name, body)

    def _store(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(json.dumps(body))
        body.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        body["spec"] = {k: v for k, v in (body.get("spec") or {}).items() if v is not None}
        self.leases[(ns, name)] = body
        return body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_PUT(self) -> None:
                self._serve()

            def do_DELETE(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    code, reply = status(400, "BadRequest", "the body is not JSON")
                else:
                    token = self.headers.get("Authorization", "")
                    code, reply = standin.answer(self.command, self.path, token, body)
                data = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def not_found(name: str) -> tuple[int, dict[str, Any]]:
    return status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')


def forbidden(verb: str, ns: str, name: str | None) -> tuple[int, dict[str, Any]]:
    return status(
        403,
        "Forbidden",
        f'leases.coordination.k8s.io "{name or ""}" is forbidden: User'
        f' "system:serviceaccount:{ns}:app" cannot {verb} resource "leases" in API group'
        f' "coordination.k8s.io" in the namespace "{ns}"',
    )


def mismatched_namespace(meta: dict[str, Any], ns: str) -> tuple[int, dict[str, Any]] | None:
    if meta.get("namespace") not in (None, ns):
        return status(
            400, "BadRequest", "the namespace of the provided object does not match the namespace"
        )
    return None


def invalid(body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """What the API's validation refuses (422), as far as Leases go."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name") or "")
    problems = []
    if not (NAME.fullmatch(name) and len(name) <= 253):
        problems.append(f"metadata.name: Invalid value: {name!r}")
    for key in meta.get("annotations") or {}:
        prefix, _, key_name = key.rpartition("/")
        if not (KEY_NAME.fullmatch(key_name) and len(key_name) <= 63) or (
            prefix and not NAME.fullmatch(prefix)
        ):
            problems.append(f"metadata.annotations: Invalid value: {key!r}")
    if len(json.dumps(meta.get("annotations") or {})) > 256 * 1024:
        problems.append("metadata.annotations: Too long: must have at most 262144 bytes")
    spec = body.get("spec") or {}
    for field in ("acquireTime", "renewTime"):
        if spec.get(field) is not None and not MICRO_TIME.fullmatch(str(spec[field])):
            problems.append(f"spec.{field}: Invalid value: {spec[field]!r}")
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        problems.append("spec.leaseDurationSeconds: Invalid value: must be greater than 0")
    if not problems:
        return None
    return status(
        422, "Invalid", f'Lease.coordination.k8s.io "{name}" is invalid: ' + ", ".join(problems)
    )


def _tls(certs: Path) -> ssl.SSLContext:
    """A CA (written as ca.crt, as the service account has it) and a certificate it
    signed for 127.0.0.1."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "standin-ca")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        _certificate(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")]),
            ca_name,
            key.public_key(),
            now,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (certs / "ca.crt").write_bytes(ca.public_bytes(pem))
    (certs / "server.crt").write_bytes(server.public_bytes(pem))
    (certs / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    return context


def _certificate(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
