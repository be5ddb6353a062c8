"""Leases (coordination.k8s.io/v1) in the pod's namespace, through the pod's service
account: read, compare-and-swap, and hold with renewal. requests is imported here only.

Every write is a compare-and-swap: a PUT with the resourceVersion read, answered 409
Conflict when another writer came in between; then read again and decide again. The
token is read at every call (the kubelet rotates it); the API server is verified with
the service account's ca.crt. Errors become TransientError naming the call and status.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from entrypoint.errors import ConfigError, TransientError
from entrypoint.fleet.store import one_line

log = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
REQUEST_TIMEOUT = 5.0  # an API server that does not answer is a transient error
WRITE_TRIES = 8  # compare-and-swap attempts before a busy Lease is a transient error
VERBS = {"GET": "get", "POST": "create", "PUT": "update"}  # RBAC's names of the calls

Lease = dict[str, Any]
# Edits a Lease in place and says whether it did (False: leave it as it is).
Change = Callable[[Lease], bool]


class Conflict(Exception):
    """409: another replica wrote the Lease since it was read (or created it)."""


class LeaseApi:
    """GET, POST and PUT of Leases in the pod's namespace, errors mapped to ours."""

    def __init__(self, api_url: str, service_account: Path, labels: dict[str, str]) -> None:
        self.service_account = service_account
        try:
            self.namespace = (service_account / "namespace").read_text().strip()
        except OSError as exc:
            raise ConfigError(f"LIVE_PULL_FLEET_URL: kubernetes, but {one_line(exc)}") from exc
        self.url = api_url.rstrip("/") + LEASES.format(namespace=self.namespace)
        self.labels = labels
        self._local = threading.local()  # a requests.Session per thread

    def get(self, name: str) -> Lease | None:
        return self._call("GET", name)

    def modify(self, name: str, change: Change) -> tuple[Lease | None, bool]:
        """Read the Lease (a new one when there is none), let `change` edit it, write it
        back if it did; again when another replica wrote in between.
        Returns the Lease as it now is, and whether this change was written."""
        for _ in range(WRITE_TRIES):
            current = self.get(name)
            lease = copy.deepcopy(current) if current is not None else self._new(name)
            if not change(lease):
                return current, False
            try:
                return self._call("POST" if current is None else "PUT", name, lease), True
            except Conflict:
                continue
        raise TransientError(f"kubernetes API: leases/{name} changed under {WRITE_TRIES} writes")

    def _new(self, name: str) -> Lease:
        """Labelled with the fleet and the Lease's kind (release, switch, fleet), so that
        old release Leases can be selected alone."""
        kind = name.removeprefix("live-pull-").split("-")[0]
        labels = {**self.labels, "live-pull.dev/kind": kind}
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "labels": labels, "annotations": {}},
            "spec": {},
        }

    def _call(self, method: str, name: str, body: Lease | None = None) -> Lease | None:
        """The Lease the API answers with; None for a GET of a missing one. A POST
        creates `name` (in the collection's URL), a PUT replaces it."""
        what = f"kubernetes API {method} leases/{name}"
        try:
            response = self._session().request(
                method,
                self.url if method == "POST" else f"{self.url}/{name}",
                json=body,
                headers={"Authorization": f"Bearer {self._token()}"},
                verify=self._ca(),
                timeout=REQUEST_TIMEOUT,
            )
        except (requests.RequestException, OSError) as exc:
            raise TransientError(f"{what}: {one_line(exc)[:300]}") from exc
        if response.status_code in (200, 201):
            return self._lease(what, response)
        if response.status_code == 404 and method == "GET":
            return None
        if response.status_code in (404, 409):  # gone or changed since read: decide again
            raise Conflict(what)
        raise TransientError(f"{what}: {self._refusal(method, response)}")

    @staticmethod
    def _lease(what: str, response: requests.Response) -> Lease:
        try:
            lease = response.json()
        except ValueError as exc:
            raise TransientError(f"{what}: HTTP {response.status_code} but no JSON") from exc
        if not isinstance(lease, dict) or not isinstance(lease.get("metadata"), dict):
            raise TransientError(f"{what}: HTTP {response.status_code} but no Lease")
        return lease

    def _refusal(self, method: str, response: requests.Response) -> str:
        status = f"HTTP {response.status_code}"
        if response.status_code == 401:
            return f"{status}: the service account token was not accepted"
        if response.status_code == 403:
            return (
                f"{status}: the service account may not {VERBS[method]} leases"
                f" (coordination.k8s.io) in namespace {self.namespace}; grant it in a Role"
            )
        try:
            message = str(response.json().get("message", ""))
        except (ValueError, AttributeError):
            message = response.text
        return f"{status} {one_line(message)[:300]}".rstrip()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _token(self) -> str:
        try:
            return (self.service_account / "token").read_text().strip()
        except OSError as exc:
            raise TransientError(f"kubernetes service account token: {one_line(exc)}") from exc

    def _ca(self) -> str | bool:
        ca = self.service_account / "ca.crt"
        return str(ca) if ca.is_file() else True


class Hold:
    """A Lease this replica holds: renewed every third of its duration on a thread of
    its own until released."""

    def __init__(self, api: LeaseApi, name: str, me: str, seconds: int) -> None:
        self.api, self.name, self.me, self.seconds = api, name, me, seconds
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease {name}", daemon=True)
        self._thread.start()

    def release(self, record: Change | None = None) -> None:
        """Stop renewing, clear the holder, and write the record if given."""
        self._released.set()
        self._thread.join(2 * REQUEST_TIMEOUT)

        def let_go(lease: Lease) -> bool:
            spec = spec_of(lease)
            mine = spec.get("holderIdentity") == self.me
            if mine:
                spec["holderIdentity"] = None
            return (record(lease) if record is not None else False) or mine

        self.api.modify(self.name, let_go)

    def _renew(self) -> None:
        while not self._released.wait(self.seconds / 3):
            try:
                _, renewed = self.api.modify(self.name, self._renewal)
            except TransientError as exc:
                log.warning("lease not renewed, it may lapse lease=%s error=%s", self.name, exc)
                continue
            if not renewed:
                log.warning("lease taken by another replica lease=%s", self.name)
                return

    def _renewal(self, lease: Lease) -> bool:
        spec = spec_of(lease)
        if self._released.is_set() or spec.get("holderIdentity") != self.me:
            return False
        spec["renewTime"] = micro_time()
        return True


def notes_of(lease: Lease | None) -> dict[str, str]:
    if lease is None:
        return {}
    return dict(lease.get("metadata", {}).get("annotations") or {})


def writable_notes(lease: Lease) -> dict[str, str]:
    metadata = lease["metadata"]
    if not metadata.get("annotations"):
        metadata["annotations"] = {}
    notes: dict[str, str] = metadata["annotations"]
    return notes


def spec_of(lease: Lease) -> dict[str, Any]:
    if not lease.get("spec"):
        lease["spec"] = {}
    spec: dict[str, Any] = lease["spec"]
    return spec


def micro_time() -> str:
    """Now as the API's MicroTime."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
