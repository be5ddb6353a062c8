"""A real PostgreSQL server for the fleet tests: Debian's binaries (installed by
.ci/run), `initdb` into a temporary directory, listening on 127.0.0.1 only, with a
password, stopped at the end."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg

from entrypoint.ports import unused_port

USER = "live"
PASSWORD = "fleet-secret-7f3a"  # the tests check that it never shows
INSTALLED = Path("/usr/lib/postgresql")


def server_binaries() -> Path | None:
    """The newest installed server's bin directory (Debian keeps one per major version)."""
    found = [path.parent for path in INSTALLED.glob("*/bin/initdb")]
    versions = [path for path in found if re.fullmatch(r"\d+", path.parent.name)]
    return max(versions, key=lambda path: int(path.parent.name), default=None)


class PostgresServer:
    def __init__(self) -> None:
        binaries = server_binaries()
        if binaries is None:
            raise RuntimeError("no PostgreSQL server installed (.ci/run installs postgresql)")
        self.bin = binaries
        # Not under pytest's 0700 directories: the server runs as its own user.
        self.root = Path(tempfile.mkdtemp(prefix="live-pull-pg-"))
        self.data = self.root / "data"
        self.port = unused_port()
        self.owner = _server_user()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PostgresServer:
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.owner is not None:
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)
            os.chown(password_file, self.owner.pw_uid, self.owner.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        self.start()
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        """Down at once: clients' connections end as a crashed server's would."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.owner is not None:  # initdb and postgres refuse to run as root
            command = ["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}",
                       "--clear-groups", *command]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{self.log()}")


def _server_user() -> pwd.struct_passwd | None:
    """As root, the server runs as Debian's `postgres` user (or nobody)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no user to run PostgreSQL as")
