"""The image in real containers (podman): docker run, restarts, PID 1, Kubernetes.

Skipped, with the reason printed, where no container engine is available.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import git
import pytest
import requests

from entrypoint.demo import fetch_text, free_port
from entrypoint.sample import APP, SampleRepo, app_files, create_sample_repo
from tests.conftest import wait_until
from tests.git_http import GitHttpServer

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/live-pull:test"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CONTAINER_UID = 10001
BOOT = 120.0

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None or os.geteuid() != 0,
    reason="no container engine (podman as root) on this machine: container suite skipped",
)


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


@pytest.fixture(scope="session")
def image() -> str:
    base = subprocess.run(
        [ROOT / "scripts" / "container-setup"],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout.strip()
    build = [
        "build",
        "--network",
        "host",
        "-v",
        f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-f",
        str(ROOT / "Dockerfile.live-pull"),
        "-t",
        IMAGE,
        str(ROOT),
    ]
    result = podman(*build, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return IMAGE


@dataclass
class Remote:
    sample: SampleRepo
    url: str  # as the container sees it
    mounts: list[str] = field(default_factory=list)


@pytest.fixture(params=["file", "http"])
def remote(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Remote]:
    root = tmp_path / "git"
    root.mkdir()
    sample = create_sample_repo(root)
    if request.param == "file":
        # The container's user reads the bind-mounted repository; git insists it own it.
        subprocess.run(
            ["chown", "-R", f"{CONTAINER_UID}:{CONTAINER_UID}", sample.remote], check=True
        )
        safe = tmp_path / "gitconfig"
        safe.write_text("[safe]\n\tdirectory = *\n")
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(safe))  # so the host can still push
        yield Remote(sample, "file:///srv/app.git", ["-v", f"{sample.remote}:/srv/app.git"])
    else:
        with GitHttpServer(root) as server:
            yield Remote(sample, server.url(sample.remote.name))


@dataclass
class Container:
    name: str
    port: int
    status_port: int
    volume: str

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def status(self) -> dict[str, object]:
        try:
            return dict(
                requests.get(f"http://127.0.0.1:{self.status_port}/status", timeout=3).json()
            )
        except (requests.RequestException, ValueError):
            return {}

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def serving(self, sha: str, timeout: float = BOOT) -> str:
        return str(
            wait_until(
                lambda: (
                    (text := fetch_text(self.url())) and f"revision {sha[:12]}" in text and text
                ),
                timeout,
                lambda: f"{self.name} serving {sha[:12]}\n{self.logs()[-3000:]}",
            )
        )


RunContainer = Callable[..., Container]


@pytest.fixture
def run_container(image: str) -> Iterator[RunContainer]:
    made: list[Container] = []
    volumes: set[str] = set()

    def run(remote: Remote, *extra: str, volume: str | None = None, **env: str) -> Container:
        volume = volume or f"lp-test-{uuid.uuid4().hex[:8]}"
        volumes.add(volume)
        container = Container(f"lp-test-{uuid.uuid4().hex[:8]}", free_port(), free_port(), volume)
        variables = {
            "REPO_URL": remote.url,
            "PORT": str(container.port),
            "LIVE_PULL_STATUS_PORT": str(container.status_port),
            "LIVE_PULL_POLL_INTERVAL": "1",
            **env,
        }
        args = [
            "run",
            "-d",
            "--name",
            container.name,
            "--network",
            "host",
            "-v",
            f"{volume}:/var/lib/live-pull",
            *remote.mounts,
            *extra,
        ]
        for key, value in variables.items():
            args += ["-e", f"{key}={value}"]
        podman(*args, image)
        made.append(container)
        return container

    yield run
    for container in made:
        podman("rm", "-f", "-t", "0", container.name, check=False)
    for volume in volumes:
        podman("volume", "rm", "-f", volume, check=False)


def head(remote: Remote) -> str:
    return git.Repo(remote.sample.work).head.commit.hexsha


def test_app_answers_and_follows_pushes_without_restart(
    remote: Remote, run_container: RunContainer
) -> None:
    container = run_container(remote)
    container.serving(head(remote))
    started = container.inspect("{{.State.StartedAt}}")
    sha = remote.sample.commit(app_files("pushed"), "pushed")
    assert "pushed from revision" in container.serving(sha)
    assert container.inspect("{{.State.StartedAt}}") == started
    assert container.inspect("{{.RestartCount}}") == "0"
    assert container.inspect("{{.Config.User}}") == "live-pull"
    # The image's HEALTHCHECK command, run where the engine would run it.
    for probe in ("healthz", "readyz"):
        assert podman("exec", container.name, "live-pull", "probe", probe).returncode == 0


def test_restart_with_volume_and_same_lockfile_does_no_install(
    remote: Remote,
    run_container,
    wheelhouse: Path,
) -> None:
    app = APP.format(message="deps").replace("import os\n", "import os\nimport tinypkg\n", 1)
    sha = remote.sample.commit({"app.py": app, "requirements.txt": "tinypkg==1.0\n"}, "deps")
    wheelhouse.chmod(0o755)  # the container's user reads it
    mounts = ("-v", f"{wheelhouse}:/wheels:ro")
    args = {"LIVE_PULL_INSTALL_ARGS": "--no-index --find-links /wheels"}
    first = run_container(remote, *mounts, **args)
    first.serving(sha)
    assert wait_until(lambda: first.status().get("installs") == 1, 60)
    podman("stop", "-t", "20", first.name)
    second = run_container(remote, *mounts, volume=first.volume, **args)
    second.serving(sha)
    status = wait_until(lambda: (s := second.status()).get("state") == "running" and s, 60)
    assert status["installs"] == 0
    assert "installing dependencies" not in second.logs()


def test_stop_exits_zero_within_grace_period(remote: Remote, run_container: RunContainer) -> None:
    container = run_container(remote)
    container.serving(head(remote))
    started = time.monotonic()
    podman("stop", "-t", "10", container.name, timeout=60)
    elapsed = time.monotonic() - started
    assert container.inspect("{{.State.ExitCode}}") == "0"
    assert elapsed < 10
    logs = container.logs()
    assert "stopped: web (terminated by SIGTERM)" in logs  # the signal reached the app
    assert "live-pull INFO entrypoint.agent: stopped" in logs


def test_fatal_app_exits_non_zero_and_restart_policy_acts(
    remote: Remote, run_container: RunContainer
) -> None:
    remote.sample.commit({"Procfile": "web: python -c 'raise SystemExit(3)'\n"}, "crash")
    container = run_container(remote, "--restart", "on-failure", LIVE_PULL_START_RETRIES="1")
    wait_until(lambda: int(container.inspect("{{.RestartCount}}") or 0) >= 1, BOOT, "a restart")
    assert "the app cannot stay up" in container.logs()
    fixed = remote.sample.commit(app_files("fixed"), "fixed")
    container.serving(fixed)


def test_orphans_are_reaped(remote: Remote, run_container: RunContainer) -> None:
    forking = APP.format(message="forks").replace(
        "def do_GET(self):\n",
        "def do_GET(self):\n"
        "        import subprocess\n"
        "        subprocess.run(['sh', '-c', 'sleep 0.2 & exit 0'])\n",
    )
    sha = remote.sample.commit({"app.py": forking}, "forks orphans")
    container = run_container(remote)
    container.serving(sha)
    for _ in range(10):
        fetch_text(container.url())
    time.sleep(1)  # every orphaned sleep has exited by now
    states = podman("exec", container.name, "sh", "-c", "cat /proc/[0-9]*/stat").stdout
    zombies = [line for line in states.splitlines() if line.split(") ")[1].startswith("Z")]
    assert zombies == [], zombies
    assert container.inspect("{{.State.Pid}}") != "0"


def _without_ports_list(manifest: str) -> str:
    lines = manifest.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "ports:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and len(lines[end]) - len(lines[end].lstrip()) > indent:
        end += 1
    return "\n".join(lines[:start] + lines[end:]) + "\n"


def test_kubernetes_manifest_runs_under_kube_play(image: str, tmp_path: Path) -> None:
    sample = create_sample_repo(tmp_path / "git")
    manifest = (ROOT / "docker" / "kubernetes" / "deployment.yaml").read_text()
    port, status_port = free_port(), free_port()
    with GitHttpServer(tmp_path / "git") as server:
        adapted = (
            manifest.replace("image: live-pull:latest", f"image: {image}")
            .replace("https://github.com/org/app.git", server.url(sample.remote.name))
            # Host networking: the pod's ports are the host's, so take free ones, and
            # podman refuses port mappings (the `ports:` list) on the host network.
            .replace('"8000"', f'"{port}"')
            .replace('"8081"', f'"{status_port}"')
            .replace("port: 8081", f"port: {status_port}")
        )
        adapted = _without_ports_list(adapted)
        path = tmp_path / "deployment.yaml"
        path.write_text(adapted)
        podman("kube", "down", str(path), check=False)  # leftovers of an interrupted run
        podman("volume", "rm", "-f", "app-state", check=False)
        podman("kube", "play", "--network", "host", str(path), timeout=120)
        try:
            wait_until(
                lambda: (
                    (text := fetch_text(f"http://127.0.0.1:{port}/")) and "from revision" in text
                ),
                BOOT,
                "the pod serving",
            )
            ready = f"http://127.0.0.1:{status_port}/readyz"
            wait_until(lambda: requests.get(ready, timeout=5).status_code == 200, 30, "readyz")
        finally:
            podman("kube", "down", str(path), check=False, timeout=120)
            podman("volume", "rm", "-f", "app-state", check=False)
