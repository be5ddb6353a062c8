"""Two identities on the host: who runs what, who owns what. (The whole app running as
another user, with every secret tried from inside it, is in the container suite.)"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint import identity
from entrypoint.config import load_settings
from entrypoint.errors import ConfigError
from entrypoint.identity import AppUser, Identity, ScratchDirs
from entrypoint.supervisor_config import ProgramSpec, Timings, render_programs

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")
APP = Identity(AppUser(NOBODY.pw_uid, NOBODY.pw_gid, "nobody"))


def test_app_user_setting_is_checked_at_load() -> None:
    base = {"REPO_URL": "file:///srv/app.git"}
    assert load_settings({**base, "LIVE_PULL_APP_USER": "nobody"}).app_user == "nobody"
    for value, message in (
        ("root", "LIVE_PULL_APP_USER: must not be root"),
        ("0", "LIVE_PULL_APP_USER: must not be root"),
        ("no-such-user-here", "LIVE_PULL_APP_USER: no such user 'no-such-user-here'"),
        ("nobody:staff", "LIVE_PULL_APP_USER: group must be a number"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings({**base, "LIVE_PULL_APP_USER": value})


def test_separation_needs_root_and_says_once_what_is_open() -> None:
    assert identity.resolve("nobody", euid=0).app == APP.app
    assert identity.resolve(f"{NOBODY.pw_uid}:{NOBODY.pw_gid}", euid=0).app == APP.app
    single = identity.resolve("nobody", euid=12345)  # OpenShift: a random non-root uid
    assert not single.separated and single.popen_kwargs() == {}
    said = identity.notice("nobody", single)
    assert said is not None and "privilege separation is off" in said
    assert "cannot switch users" in said and "credentials" in said
    assert identity.notice(None, Identity()) is not None
    assert identity.notice("nobody", APP) is None


@as_root
def test_hand_over_and_take_back_never_follow_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside-secret"
    outside.write_text("secret")
    outside.chmod(0o600)
    release = tmp_path / "release"
    (release / "static").mkdir(parents=True)
    (release / "app.py").write_text("print('hi')\n")
    (release / "link").symlink_to(outside)
    (release / "static" / "setuid").write_text("x")
    APP.hand_over(release)
    assert (release / "app.py").stat().st_uid == NOBODY.pw_uid
    assert os.lstat(release / "link").st_uid == NOBODY.pw_uid
    assert outside.stat().st_uid == 0 and stat.S_IMODE(outside.stat().st_mode) == 0o600
    # What the app did while it ran: a set-uid file, a world-writable directory.
    (release / "static" / "setuid").chmod(0o4777)
    (release / "static").chmod(0o777)
    APP.take_back(release)
    for path in (release, release / "static", release / "static" / "setuid", release / "app.py"):
        info = path.stat()
        assert info.st_uid == os.geteuid(), path
        assert not stat.S_IMODE(info.st_mode) & 0o6022, path
    assert outside.stat().st_uid == 0 and stat.S_IMODE(outside.stat().st_mode) == 0o600


@as_root
def test_a_child_started_as_the_app_user_cannot_read_the_agents_files(open_dir: Path) -> None:
    secret = open_dir / "credentials"
    secret.write_text("token")
    secret.chmod(0o600)
    result = subprocess.run(
        ["/bin/sh", "-c", f"id -u; cat {secret}"],
        capture_output=True,
        text=True,
        check=False,
        **APP.popen_kwargs(),
    )
    assert result.stdout.split()[0] == str(NOBODY.pw_uid)
    assert result.returncode != 0 and "Permission denied" in result.stderr


@as_root
def test_scratch_is_the_apps_own_and_goes_with_its_release(tmp_path: Path) -> None:
    scratch = ScratchDirs(tmp_path / "scratch", APP)
    variables = scratch.variables("a" * 40)
    home = Path(variables["HOME"])
    assert variables["TMPDIR"] == str(home) and home.parent == tmp_path / "scratch"
    assert home.stat().st_uid == NOBODY.pw_uid and stat.S_IMODE(home.stat().st_mode) == 0o700
    scratch.variables("b" * 40)
    scratch.collect({"b" * 40})
    assert not home.exists() and (tmp_path / "scratch" / ("b" * 40)).is_dir()


def test_the_programs_run_as_the_app_user() -> None:
    program = ProgramSpec("web", "python app.py", Path("/srv/app"), {"PORT": "8000"})
    rendered = render_programs([program], Timings(1, 3, 5.0), None, "home", "nobody")
    assert "\nuser=nobody\n" in rendered
    assert "user=" not in render_programs([program], Timings(1, 3, 5.0), None, "home", None)


@as_root
def test_the_agent_refuses_an_app_user_that_cannot_reach_its_home(tmp_path: Path) -> None:
    """/tmp/pytest-of-root is root's alone: the app user could never reach the releases."""
    env = {
        **os.environ,
        "REPO_URL": "file:///nonexistent/app.git",
        "LIVE_PULL_HOME": str(tmp_path / "home"),
        "LIVE_PULL_APP_USER": "nobody",
        "LIVE_PULL_STATUS_PORT": "0",
    }
    blocked = APP.blocked_on_the_way(tmp_path)
    assert blocked is not None  # the premise: some parent is not searchable by nobody
    result = subprocess.run(
        [sys.executable, "-m", "entrypoint", "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "LIVE_PULL_APP_USER: user nobody cannot reach" in last
    assert "is not searchable by it" in last


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can pass through (pytest's own base is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="live-pull-identity-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@as_root
def test_secret_files_the_app_could_read_are_found(open_dir: Path) -> None:
    mounted = open_dir / "token"
    mounted.write_text("token")
    mounted.chmod(0o644)  # a Kubernetes Secret's default mode
    assert APP.can_read(mounted)
    mounted.chmod(0o400)
    assert not APP.can_read(mounted)
    settings = load_settings(
        {"REPO_URL": "https://host.example/app.git", "LIVE_PULL_GIT_TOKEN_FILE": str(mounted)}
    )
    assert settings.secret_files() == {"LIVE_PULL_GIT_TOKEN_FILE": mounted}


@as_root
def test_a_home_from_a_single_uid_agent_is_taken_back(tmp_path: Path) -> None:
    """An older image ran everything as uid 10001, which is the app user now."""
    home = tmp_path / "home"
    for path in ("repo/config", "venvs/abc/bin/python", "credentials", "shared/db", "scratch/x"):
        (home / path).parent.mkdir(parents=True, exist_ok=True)
        (home / path).write_text("x")
    subprocess.run(["chown", "-R", f"{NOBODY.pw_uid}:{NOBODY.pw_gid}", str(home)], check=True)
    APP.claim_home(home, {"shared", "scratch", "cache"})
    for path in ("", "repo/config", "venvs/abc/bin/python", "credentials"):
        assert (home / path).stat().st_uid == 0, path
    for path in ("shared/db", "scratch/x"):
        assert (home / path).stat().st_uid == NOBODY.pw_uid, path


@as_root
def test_the_release_a_quick_start_runs_stays_the_apps(tmp_path: Path) -> None:
    """Taking the home over from a quick start (quickstart.py): the app is running its
    release and may write there; the other releases are taken back as always."""
    home = tmp_path / "home"
    running, other = home / "releases" / ("a" * 40), home / "releases" / ("b" * 40)
    for release in (running, other):
        (release / "app.py").parent.mkdir(parents=True)
        (release / "app.py").write_text("x")
        APP.hand_over(release)
    APP.claim_home(home, {"shared", "scratch", "cache"}, running)
    assert (running / "app.py").stat().st_uid == NOBODY.pw_uid
    assert running.stat().st_uid == NOBODY.pw_uid
    for path in (home / "releases", other, other / "app.py"):
        assert path.stat().st_uid == 0, path
        assert not stat.S_IMODE(path.stat().st_mode) & 0o022, path
