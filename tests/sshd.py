"""A real OpenSSH server on 127.0.0.1 for the deploy-key tests (Debian's openssh-server)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from entrypoint.demo import free_port

SSHD = "/usr/sbin/sshd"


def available() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh-keygen") is not None


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path


# Runs for every session, while the client's ssh (and the git that started it) is alive:
# snapshot their argv, then run what the client asked for.
SNOOP = """#!/bin/sh
for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$f" 2>/dev/null; echo; done \\
  | grep -e ssh -e git >> {seen}
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


class SshServer:
    """sshd accepting one client key, for the user running the tests."""

    def __init__(self, root: Path, client_public_key: Path) -> None:
        self.root = root
        self.port = free_port()
        self.host_key = keygen(root / "host_key")
        authorized = root / "authorized_keys"
        authorized.write_text(client_public_key.read_text())
        authorized.chmod(0o600)
        self.argv_file = root / "argv-seen.txt"
        snoop = root / "snoop.sh"
        snoop.write_text(SNOOP.format(seen=self.argv_file))
        snoop.chmod(0o755)
        self.config = root / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"ForceCommand {snoop}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def git_client_argv(self) -> list[str]:
        """Every ssh/git process's argv, taken while a client's session was open; fails
        if no ssh client was seen, so a secret scan of it cannot pass vacuously."""
        seen = self.argv_file.read_text().splitlines() if self.argv_file.exists() else []
        clients = [line for line in seen if line.split(" ")[0].endswith("ssh")]
        assert clients, f"no ssh client process seen during sessions: {seen[:5]}"
        return seen

    def known_hosts_line(self) -> str:
        public = (self.root / "host_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    def __enter__(self) -> SshServer:
        Path("/run/sshd").mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ssh-keyscan", "-p", str(self.port), "127.0.0.1"], capture_output=True, timeout=10
            )
            if probe.stdout:
                return self
            time.sleep(0.2)
        raise RuntimeError("sshd did not come up")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
