"""The image in real containers (podman): docker run, restarts, PID 1, Kubernetes.

Skipped, with the reason printed, where no container engine is available.
"""

from __future__ import annotations

import json
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
from tests import projects
from tests.conftest import wait_until
from tests.git_http import GitHttpServer

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("LIVE_PULL_TEST_IMAGE", "localhost/live-pull:test")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CONTAINER_UID = 10001
BOOT = 120.0
# The capabilities the README documents for the agent (Kubernetes securityContext):
# every container here runs with these alone, so the list is proven sufficient.
AGENT_CAPABILITIES = ("--cap-drop=all", "--cap-add=CHOWN,DAC_OVERRIDE,FOWNER,KILL,SETGID,SETUID")

pytestmark = [
    pytest.mark.skipif(
        shutil.which("podman") is None or os.geteuid() != 0,
        reason="no container engine (podman as root) on this machine: container suite skipped",
    ),
    # Under pytest-xdist one worker runs them all: the image is built once, under its tag.
    pytest.mark.xdist_group("containers"),
]


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
        """The app answers from `sha`, and the agent has proven it (its programs stayed
        up their start seconds): only then is it ready."""
        text = str(
            wait_until(
                lambda: (
                    (text := fetch_text(self.url())) and f"revision {sha[:12]}" in text and text
                ),
                timeout,
                lambda: f"{self.name} serving {sha[:12]}\n{self.logs()[-3000:]}",
            )
        )
        wait_until(
            lambda: self.status().get("revision") == sha and self.status().get("ready"),
            timeout,
            lambda: f"{self.name} ready on {sha[:12]}: {self.status()}",
        )
        return text


RunContainer = Callable[..., Container]


@pytest.fixture
def run_container(image: str) -> Iterator[RunContainer]:
    made: list[Container] = []
    volumes: set[str] = set()

    def run(
        remote: Remote,
        *extra: str,
        volume: str | None = None,
        volume_options: str = "",
        from_image: str | None = None,
        **env: str,
    ) -> Container:
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
            f"{volume}:/var/lib/live-pull{volume_options}",
            "--security-opt=no-new-privileges",
            *AGENT_CAPABILITIES,
            *remote.mounts,
            *extra,
        ]
        for key, value in variables.items():
            args += ["-e", f"{key}={value}"]
        podman(*args, from_image or image)
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
    assert container.inspect("{{.Config.User}}") == "root"  # the agent; the app is `app`
    assert "privilege separation on" in container.logs()
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
    # The signal reached the proxy, which drained, then stopped the app.
    assert "stopped: web_0 (exit status 0)" in logs
    assert "live-pull proxy: the app stopped (terminated by SIGTERM)" in logs
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
    # A process may end between the shell's listing and its reading (the agent's git
    # runs come and go): skipped, not an error.
    listing = "for stat in /proc/[0-9]*/stat; do cat $stat 2>/dev/null; done; true"
    states = podman("exec", container.name, "sh", "-c", listing).stdout
    assert "\n1 (" in "\n" + states, states  # PID 1 (tini) was read, at least
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


# -- the app never holds the deploy's secrets ------------------------------------------

TOKEN = "ghs_containerSecretToken0123456789"
WEBHOOK_SECRET = "webhook-secret-value-42"
# Run by the app (a Procfile program) inside the container: tries every way to a secret
# the issue names and prints one line per attempt, then `PROBE done <revision>`.
PROBE = r"""
import json, os, socket, sys, pathlib, time
home = pathlib.Path('/var/lib/live-pull')
me = os.getuid()
# Until this revision is proven (`current` names it), the release it replaces still runs.
while os.path.realpath(home / 'current') != os.getcwd():
    time.sleep(0.1)

def say(*parts):
    print('PROBE', *parts, flush=True)

def attempt(kind, target, action):
    try:
        result = action()
    except OSError as exc:
        say(kind, target, 'DENIED', exc.errno)
    else:
        say(kind, target, 'OK', repr(result)[:2000])

def read(path):
    with open(path, 'rb') as handle:
        return handle.read()

def write(path):
    with open(path, 'w') as handle:
        handle.write('probe')
    return 'written'

def connect(path):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
    return 'connected'

for entry in pathlib.Path('/proc').iterdir():
    if entry.name.isdigit():
        owner = entry.stat().st_uid
        attempt('environ-of-uid-' + ('self' if owner == me else str(owner)), entry.name,
                lambda: read(entry / 'environ'))
for directory, _, files in os.walk(home):
    for name in files:
        attempt('read', os.path.join(directory, name), lambda: read(os.path.join(directory, name)))
for secret in pathlib.Path('/run/secrets').iterdir():
    attempt('secret', secret, lambda: read(secret))
attempt('connect', 'supervisord', lambda: connect(home / 'run' / 'supervisor.sock'))
release = pathlib.Path.cwd()
attempt('write-own-release', release, lambda: write(release / 'probe.out'))
attempt('write-home', os.environ['HOME'], lambda: write(pathlib.Path(os.environ['HOME']) / 'p'))
attempt('write-state-volume', home, lambda: write(home / 'probe.out'))
attempt('write-state', 'state.json', lambda: write(home / 'state.json'))
attempt('write-repo', 'repo', lambda: write(home / 'repo' / 'config'))
for other in (home / 'releases').iterdir():
    if other != release:
        attempt('write-other-release', other, lambda: write(other / 'probe.out'))
for env in (home / 'venvs').iterdir():
    attempt('write-environment', env, lambda: write(env / 'bin' / 'python'))
say('env', json.dumps(dict(os.environ)))
say('done', os.environ['LIVE_PULL_REVISION'])
"""


def _probe_lines(logs: str, sha: str) -> list[str]:
    """The probe lines of one revision's run (the lines before its `done`)."""
    lines = [line for line in logs.splitlines() if line.startswith("PROBE ")]
    end = lines.index(f"PROBE done {sha}")
    start = max(
        (i + 1 for i, line in enumerate(lines[:end]) if line.startswith("PROBE done")), default=0
    )
    return lines[start:end]


def test_the_app_cannot_reach_any_secret(image: str, tmp_path: Path, run_container) -> None:
    """As the app (a Procfile program): every path to a secret the issue names is denied."""
    root = tmp_path / "git"
    root.mkdir()
    sample = create_sample_repo(root)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name, value in (("token", TOKEN), ("webhook", WEBHOOK_SECRET)):
        (secrets_dir / name).write_text(value + "\n")
        (secrets_dir / name).chmod(0o400)  # root's, as a Kubernetes Secret with mode 0400
    files = {
        "probe.py": PROBE,
        "requirements.txt": "\n",  # an environment, to try writing into
        "Procfile": "web: python app.py\nprobe: python probe.py && sleep 3600\n",
    }
    first = sample.commit(files, "probe")
    with GitHttpServer(root, credentials=("x-access-token", TOKEN)) as server:
        remote = Remote(sample, server.url(sample.remote.name))
        container = run_container(
            remote,
            "-v",
            f"{secrets_dir}:/run/secrets:ro",
            LIVE_PULL_GIT_TOKEN_FILE="/run/secrets/token",
            LIVE_PULL_WEBHOOK_SECRET_FILE="/run/secrets/webhook",
        )
        container.serving(first)
        # A second revision, so that an older release is on disk to try.
        second = sample.commit({"probe.py": PROBE + "\n# second\n"}, "probe again")
        container.serving(second)
        logs = wait_until(
            lambda: (text := container.logs()) and f"PROBE done {second}" in text and text,
            BOOT,
            lambda: container.logs()[-3000:],
        )
    password = podman(
        "exec",
        container.name,
        "sed",
        "-n",
        "s/^password=//p",
        "/var/lib/live-pull/run/supervisord.conf",
    ).stdout.split()[0]
    lines = _probe_lines(logs, second)
    shown = "\n".join(lines)
    for secret in (TOKEN, WEBHOOK_SECRET, password):
        assert secret not in shown
    outcome = {
        " ".join(line.split()[1:3]): line.split()[3] for line in lines if len(line.split()) > 3
    }
    others = [k for k in outcome if k.startswith("environ-of-uid-") and "self" not in k]
    assert others and all(outcome[k] == "DENIED" for k in others), shown
    assert outcome["environ-of-uid-0 1"] == "DENIED"  # PID 1 (tini) holds the original env
    for path in ("/run/secrets/token", "/run/secrets/webhook"):
        assert outcome[f"secret {path}"] == "DENIED"
    assert outcome["read /var/lib/live-pull/run/supervisord.conf"] == "DENIED"
    assert outcome["connect supervisord"] == "DENIED"
    assert [k for k in outcome if k.startswith("write-other-release")], shown
    assert [k for k in outcome if k.startswith("write-environment")], shown
    for key, result in outcome.items():
        allowed = key.startswith(("write-own-release", "write-home"))
        if key.startswith("write"):
            assert result == ("OK" if allowed else "DENIED"), key
    env = json.loads(next(line for line in lines if line.startswith("PROBE env ")).split(" ", 2)[2])
    assert not [key for key in env if key.endswith("_FILE") or "SECRET" in key or "TOKEN" in key]
    assert set(k for k in env if k.startswith("LIVE_PULL_")) <= {
        "LIVE_PULL_REVISION",
        "LIVE_PULL_ENV",
        "LIVE_PULL_PROCESS",
    }
    assert env["HOME"].startswith("/var/lib/live-pull/scratch/")


def test_one_forced_uid_runs_with_separation_off(remote: Remote, run_container) -> None:
    """Kubernetes runAsUser / OpenShift: one non-root uid, no switching; it still runs and
    says once what the app can reach."""
    if remote.url.startswith("file://"):
        pytest.skip("one remote kind is enough here")
    container = run_container(remote, "--user", "12345:0", volume_options=":U")
    container.serving(head(remote))
    logs = container.logs()
    assert logs.count("privilege separation is off") == 1
    assert "cannot switch users" in logs


def _running(container: Container, needle: str) -> bool:
    listing = podman(
        "exec", container.name, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '", check=False
    ).stdout
    return needle in listing


def test_escaped_app_processes_end_with_their_program(
    remote: Remote, run_container: RunContainer
) -> None:
    """The agent may not read the app user's /proc environ (no CAP_SYS_PTRACE): it has
    the app's tags read as the app user, and still ends what escaped its group."""
    if remote.url.startswith("file://"):
        pytest.skip("one remote kind is enough here")
    procfile = "web: python app.py\nbg: setsid sleep 4242 & exec sleep 3600\n"
    first = remote.sample.commit({"Procfile": procfile}, "a program that escapes")
    container = run_container(remote)
    container.serving(first)
    wait_until(lambda: _running(container, "sleep 4242"), 30, "the escaped process")
    second = remote.sample.commit({"Procfile": "web: python app.py\n"}, "no more bg")
    container.serving(second)
    wait_until(lambda: not _running(container, "sleep 4242"), 30, "the escapee ended")


def test_a_project_is_installed_per_release_as_the_app_user(
    remote: Remote, run_container, wheelhouse: Path
) -> None:
    """requirements.txt with `-e .`: the dependencies once, in the shared layer; the
    project per release, its console script the web command, built by the app user,
    and owned by the agent once built (the app cannot change what it runs)."""
    if remote.url.startswith("http"):
        pytest.skip("one remote kind is enough here")
    first = remote.sample.commit(projects.requirements_project("v0", "1.0"), "a project")
    wheelhouse.chmod(0o755)
    mounts = ("-v", f"{wheelhouse}:/wheels:ro")
    container = run_container(
        remote, *mounts, LIVE_PULL_INSTALL_ARGS="--no-index --find-links /wheels"
    )
    text = container.serving(first)
    own = f"/var/lib/live-pull/releases/{first}/src/webapp/web.py"
    assert f"v0 webapp=1.2.3 tinypkg=1.0 file={own}" in text
    second = remote.sample.commit(projects.requirements_project("v1", "1.0"), "code only")
    text = container.serving(second)
    assert f"v1 webapp=1.2.3 tinypkg=1.0 file=/var/lib/live-pull/releases/{second}/" in text
    assert container.status()["installs"] == 1
    layer = f"/var/lib/live-pull/layers/{second}"
    owners = podman("exec", container.name, "stat", "-c", "%u %a", layer, f"{layer}/bin").stdout
    assert owners.split("\n")[:2] == ["0 755", "0 755"]
    denied = podman("exec", "--user", "app", container.name, "touch", f"{layer}/bin/x", check=False)
    assert denied.returncode != 0


def test_a_derived_image_starts_offline_from_its_baked_release(
    image: str, run_container, tmp_path: Path
) -> None:
    """docker/Dockerfile.baked as the README gives it: `RUN live-pull prepare` in the
    build (the release step included), then the container starts from the baked
    release with the repository out of reach."""
    sample = create_sample_repo(tmp_path / "git")
    step = 'release: echo "$LIVE_PULL_REVISION" > baked-release\n'
    sha = sample.commit({"Procfile": "web: python app.py\n" + step}, "with a release step")
    baked = f"localhost/live-pull-baked:test-{uuid.uuid4().hex[:8]}"
    context = tmp_path / "context"
    context.mkdir()
    dockerfile = (ROOT / "docker" / "Dockerfile.baked").read_text()
    with GitHttpServer(tmp_path / "git") as server:
        url = server.url(sample.remote.name)
        adapted = dockerfile.replace("FROM live-pull", f"FROM {image}")
        (context / "Dockerfile").write_text(adapted.replace("https://github.com/org/app.git", url))
        built = podman("build", "--network", "host", "-t", baked, str(context), check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert f"prepared sha={sha}" in built.stdout + built.stderr
    try:
        container = run_container(Remote(sample, url), from_image=baked)  # nothing answers
        assert "hello from revision" in container.serving(sha)
        marker = f"/srv/live-pull/releases/{sha}/baked-release"
        assert podman("exec", container.name, "cat", marker).stdout.strip() == sha
        wait_until(  # and it still asks the remote
            lambda: "check failed kind=transient" in container.logs(), 60, container.logs
        )
    finally:
        podman("rmi", "-f", baked, check=False)


BYTECODE_CHECK = """
import importlib, os, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
compiled = [m.__cached__ for m in list(sys.modules.values()) if getattr(m, "__cached__", None)]
missing = sorted(path for path in compiled if not os.path.exists(path))
print(len(compiled), "modules;", len(missing), "without bytecode:", *missing[:5])
"""


def test_the_image_keeps_the_bytecode_of_what_the_agent_and_proxy_import(image: str) -> None:
    """A new container (each pod's restart) must not compile the agent again, and the
    proxy, run as the app user, could not even keep what it compiled."""
    modules = ["entrypoint.main", "entrypoint.cli", "entrypoint.agent", "entrypoint.updater"]
    modules += ["entrypoint.switching.proxy", "supervisor.supervisord", "git", "aiohttp.web"]
    result = podman(
        "run", "--rm", "--network", "host", "--user", "app", "--entrypoint",
        "/opt/live-pull/bin/python", image, "-B", "-c", BYTECODE_CHECK, *modules,
    )  # fmt: skip
    counted, _, rest = result.stdout.partition(" modules; ")
    assert int(counted) > 300, result.stdout
    assert rest.startswith("0 without bytecode"), result.stdout
