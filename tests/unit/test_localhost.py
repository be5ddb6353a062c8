"""The operator's routes (/rollback, /pause, /resume, /sync?now) answer this machine's
own peers only: 127.0.0.1 and ::1, as either listener sees them."""

from __future__ import annotations

import pytest

from entrypoint.status import from_this_machine


@pytest.mark.parametrize("remote", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"])
def test_loopback_peers_are_this_machine(remote: str) -> None:
    assert from_this_machine(remote)


@pytest.mark.parametrize(
    "remote",
    [None, "", "127.0.0.2", "10.0.0.1", "::ffff:10.0.0.1", "0.0.0.0", "::", "fe80::1%eth0", "x"],
)
def test_other_peers_are_not(remote: str | None) -> None:
    assert not from_this_machine(remote)
