"""Every dependency spec format, with uv and with pip, into real environments."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from entrypoint.depspec import SpecKind, detect
from entrypoint.environments import MARKER, Environments, InstallOptions
from entrypoint.errors import InstallError
from entrypoint.installers import Installer, pick_installer
from tests.wheels import build_wheel, file_hash

INSTALLERS = ["uv", "pip"]


def environments(
    home: Path,
    installer: Installer,
    wheelhouse: Path,
    lockfile: str | None = None,
    command: str | None = None,
) -> Environments:
    options = InstallOptions(
        lockfile, command, ("--no-index", "--find-links", str(wheelhouse)), timeout=300
    )
    return Environments(home / "venvs", home / "cache", installer, options, threading.Event())


def installed(env: Path) -> dict[str, str]:
    """name -> version of what is importable in env (tinypkg, tinydep, and the refused)."""
    code = (
        "import importlib.metadata as m, json\n"
        "names = ['tinypkg', 'tinydep', 'devtool', 'winonly']\n"
        "found = {}\n"
        "for n in names:\n"
        "    try: found[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(found))\n"
    )
    out = subprocess.run(
        [env / "bin" / "python", "-c", code], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def write(app: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(content)
    return app


def poetry_files(wheelhouse: Path) -> dict[str, str]:
    tinypkg = file_hash(wheelhouse / "tinypkg-1.0-py3-none-any.whl")
    tinydep = file_hash(wheelhouse / "tinydep-1.0-py3-none-any.whl")
    lock = f"""
[[package]]
name = "tinypkg"
version = "1.0"
optional = false
python-versions = "*"
files = [{{file = "tinypkg-1.0-py3-none-any.whl", hash = "{tinypkg}"}}]

[package.dependencies]
tinydep = ">=1"
winonly = {{version = "*", markers = "sys_platform == \\"win32\\""}}

[[package]]
name = "tinydep"
version = "1.0"
optional = false
python-versions = "*"
files = [{{file = "tinydep-1.0-py3-none-any.whl", hash = "{tinydep}"}}]

[[package]]
name = "winonly"
version = "1.0"
optional = false
python-versions = "*"
files = []

[[package]]
name = "devtool"
version = "1.0"
optional = false
python-versions = "*"
files = []

[metadata]
lock-version = "2.0"
python-versions = "^3.11"
content-hash = "0"
"""
    pyproject = (
        '[tool.poetry]\nname = "app"\nversion = "0"\n\n'
        '[tool.poetry.dependencies]\npython = "^3.11"\ntinypkg = "1.0"\n\n'
        '[tool.poetry.group.dev.dependencies]\ndevtool = "*"\n'
    )
    return {"poetry.lock": lock, "pyproject.toml": pyproject}


def pipfile_files(wheelhouse: Path, tinypkg_hash: str | None = None) -> dict[str, str]:
    lock = {
        "_meta": {"hash": {"sha256": "0"}, "pipfile-spec": 6, "sources": []},
        "default": {
            "tinypkg": {
                "hashes": [tinypkg_hash or file_hash(wheelhouse / "tinypkg-2.0-py3-none-any.whl")],
                "version": "==2.0",
            },
            "tinydep": {
                "hashes": [file_hash(wheelhouse / "tinydep-1.0-py3-none-any.whl")],
                "version": "==1.0",
            },
            "winonly": {"hashes": [], "version": "==1.0", "markers": "sys_platform == 'win32'"},
        },
        "develop": {"devtool": {"hashes": [], "version": "==1.0"}},
    }
    return {"Pipfile.lock": json.dumps(lock)}


def uv_lock_files(wheelhouse: Path, app: Path) -> dict[str, str]:
    pyproject = (
        '[project]\nname = "app"\nversion = "0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["tinypkg==1.0", "winonly; sys_platform == \'win32\'"]\n'
        "[dependency-groups]\ndev = []\n"
    )
    write(app, {"pyproject.toml": pyproject})
    build_wheel(wheelhouse / "win", "winonly", "1.0")
    uv = pick_installer("uv").uv_path
    assert uv is not None
    subprocess.run(
        [
            uv,
            "lock",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--find-links",
            str(wheelhouse / "win"),
        ],
        cwd=app,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheelhouse / "win" / "winonly-1.0-py3-none-any.whl").unlink()  # must not be needed
    return {}


CASES = {
    "requirements": lambda wh, app: {
        "requirements.txt": "-r base.txt\n-c constraints.txt\n",
        "base.txt": "tinypkg\n",
        "constraints.txt": "tinypkg==1.0\n",
    },
    "uv.lock": uv_lock_files,
    "poetry.lock": lambda wh, app: poetry_files(wh),
    "Pipfile.lock": lambda wh, app: pipfile_files(wh),
    "pyproject": lambda wh, app: {
        "pyproject.toml": '[project]\nname = "app"\nversion = "0"\n'
        'dependencies = ["tinypkg==2.0"]\n'
    },
}
EXPECTED = {
    "requirements": ("1.0", SpecKind.REQUIREMENTS),
    "uv.lock": ("1.0", SpecKind.UV_LOCK),
    "poetry.lock": ("1.0", SpecKind.POETRY_LOCK),
    "Pipfile.lock": ("2.0", SpecKind.PIPFILE_LOCK),
    "pyproject": ("2.0", SpecKind.PYPROJECT),
}


@pytest.mark.parametrize("installer_name", INSTALLERS)
@pytest.mark.parametrize("case", list(CASES))
def test_each_spec_format_installs_its_locked_set(
    case: str, installer_name: str, wheelhouse: Path, tmp_path: Path
) -> None:
    app = tmp_path / "release" / "app"
    app.mkdir(parents=True)
    write(app, CASES[case](wheelhouse, app))
    version, kind = EXPECTED[case]
    spec = detect(app, None, None)
    assert spec is not None and spec.kind is kind
    envs = environments(tmp_path, pick_installer(installer_name), wheelhouse)
    env = envs.ensure(app)
    assert env is not None
    assert (env.path / MARKER).is_file()
    assert installed(env.path) == {"tinypkg": version, "tinydep": "1.0"}
    script = subprocess.run([env.path / "bin" / "tinypkg-version"], capture_output=True, text=True)
    assert script.stdout.strip() == version  # scripts point at the final path, not the staging one
    assert envs.installs == 1
    again = envs.ensure(app)
    assert again == env and envs.installs == 1  # same digest: reused, no install


def test_requirements_includes_are_part_of_the_digest(wheelhouse: Path, tmp_path: Path) -> None:
    app = write(tmp_path / "app", CASES["requirements"](wheelhouse, tmp_path))
    envs = environments(tmp_path, pick_installer("uv"), wheelhouse)
    first = envs.ensure(app)
    write(app, {"constraints.txt": "tinypkg==2.0\n"})
    second = envs.ensure(app)
    assert first is not None and second is not None
    assert first.digest != second.digest
    assert installed(second.path)["tinypkg"] == "2.0"
    assert installed(first.path)["tinypkg"] == "1.0"  # the old one is kept until collected


def test_pipfile_hashes_are_honoured(wheelhouse: Path, tmp_path: Path) -> None:
    wrong = "sha256:" + "0" * 64
    app = write(tmp_path / "app", pipfile_files(wheelhouse, tinypkg_hash=wrong))
    for name in INSTALLERS:
        envs = environments(tmp_path / name, pick_installer(name), wheelhouse)
        with pytest.raises(InstallError, match="install failed"):
            envs.ensure(app)
        assert not any((tmp_path / name / "venvs").iterdir())  # nothing half-built is left


def test_no_spec_means_no_environment(wheelhouse: Path, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {"app.py": "print('hi')\n"})
    assert environments(tmp_path, pick_installer("pip"), wheelhouse).ensure(app) is None


def test_lockfile_setting_picks_the_file(wheelhouse: Path, tmp_path: Path) -> None:
    app = write(
        tmp_path / "app",
        {"requirements.txt": "tinypkg==1.0\n", "deploy/prod.txt": "tinypkg==2.0\n"},
    )
    env = environments(
        tmp_path, pick_installer("uv"), wheelhouse, lockfile="deploy/prod.txt"
    ).ensure(app)
    assert env is not None and installed(env.path)["tinypkg"] == "2.0"
    with pytest.raises(InstallError, match="not in the revision"):
        environments(tmp_path, pick_installer("uv"), wheelhouse, lockfile="nope.txt").ensure(app)


def test_interrupted_build_is_never_used(wheelhouse: Path, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {"requirements.txt": "tinypkg==1.0\n"})
    envs = environments(tmp_path, pick_installer("uv"), wheelhouse)
    env = envs.ensure(app)
    assert env is not None
    (env.path / MARKER).unlink()  # as if killed before the marker was written
    rebuilt = envs.ensure(app)
    assert rebuilt == env and envs.installs == 2
    assert (env.path / MARKER).is_file()


# -- reuse only what is intact -----------------------------------------------------------------


def site_packages(env: Path) -> Path:
    [site] = env.glob("lib/python*/site-packages")
    return site


def imports_tinypkg(env: Path) -> bool:
    """tinypkg 1.0 and tinydep import, and their metadata is there (entry points need it)."""
    code = (
        "import importlib.metadata as m, tinypkg, tinydep\n"
        "print(tinypkg.VERSION, m.version('tinypkg'), m.version('tinydep'))\n"
    )
    try:
        result = subprocess.run(
            [env / "bin" / "python", "-c", code], capture_output=True, text=True
        )
    except OSError:  # no interpreter
        return False
    return result.returncode == 0 and result.stdout.split() == ["1.0", "1.0", "1.0"]


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


DAMAGE = {
    "a package directory": lambda env: site_packages(env) / "tinypkg",
    "a dist-info": lambda env: site_packages(env) / "tinydep-1.0.dist-info",
    "the interpreter": lambda env: env / "bin" / "python",
}


@pytest.mark.parametrize("damage", list(DAMAGE.values()), ids=list(DAMAGE))
def test_a_damaged_environment_is_rebuilt(
    damage: Callable[[Path], Path],
    wheelhouse: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = write(tmp_path / "app", {"requirements.txt": "tinypkg==1.0\n"})
    envs = environments(tmp_path, pick_installer("uv"), wheelhouse)
    env = envs.ensure(app)
    assert env is not None and imports_tinypkg(env.path)
    gone = damage(env.path)
    remove(gone)
    assert not imports_tinypkg(env.path)

    assert envs.ensure(app) == env
    assert envs.installs == 2
    assert imports_tinypkg(env.path)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"digest={env.digest}" in warning
    assert f"missing={gone.relative_to(env.path)}" in warning
    assert sorted(p.name for p in (tmp_path / "venvs").iterdir()) == [env.digest]  # none aside
    assert envs.ensure(app) == env and envs.installs == 2  # and then reused


def test_an_intact_environment_is_reused_without_an_install(
    wheelhouse: Path, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {"requirements.txt": "tinypkg==1.0\n"})
    envs = environments(tmp_path, pick_installer("pip"), wheelhouse)
    env = envs.ensure(app)
    assert env is not None
    manifest = json.loads((env.path / MARKER).read_text())
    site = site_packages(env.path).relative_to(env.path)
    assert manifest["digest"] == env.digest
    assert {"bin/python", f"{site}/tinypkg", f"{site}/tinydep-1.0.dist-info"} <= set(
        manifest["entries"]
    )
    (site_packages(env.path) / "added_by_the_app.py").write_text("")  # additions do not matter
    shutil.rmtree(site_packages(env.path) / "tinypkg" / "__pycache__", ignore_errors=True)
    assert envs.ensure(app) == env and envs.installs == 1


def test_an_old_style_marker_is_checked_against_records_and_upgraded(
    wheelhouse: Path, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {"requirements.txt": "tinypkg==1.0\n"})
    envs = environments(tmp_path, pick_installer("uv"), wheelhouse)
    env = envs.ensure(app)
    assert env is not None
    new_style = (env.path / MARKER).read_text()
    (env.path / MARKER).write_text(env.digest + "\n")  # as written before manifests
    assert envs.ensure(app) == env and envs.installs == 1  # intact: reused, no reinstall
    assert json.loads((env.path / MARKER).read_text()) == json.loads(new_style)

    (env.path / MARKER).write_text(env.digest + "\n")
    shutil.rmtree(site_packages(env.path) / "tinydep")  # its dist-info's RECORD still names it
    assert envs.ensure(app) == env and envs.installs == 2
    assert imports_tinypkg(env.path)


def test_the_damaged_environment_stays_in_place_while_its_replacement_builds(
    wheelhouse: Path, tmp_path: Path
) -> None:
    """The running revision may still use it: only the finished build replaces it."""
    app = tmp_path / "app"
    app.mkdir()
    seen = tmp_path / "seen.txt"
    uv = pick_installer("uv").uv_path
    assert uv is not None
    command = (
        f"ls {tmp_path / 'venvs'} > {seen} && "
        f"{uv} pip install --no-index --find-links {wheelhouse} tinypkg==1.0"
    )
    envs = environments(tmp_path, pick_installer("uv"), wheelhouse, command=command)
    env = envs.ensure(app)
    assert env is not None and imports_tinypkg(env.path)
    assert envs.digest_for(app) == env.digest
    remove(site_packages(env.path) / "tinypkg")
    assert envs.ensure(app) == env and envs.installs == 2
    assert env.digest in seen.read_text().split()  # still there during the install
    assert imports_tinypkg(env.path)


def test_digest_for_names_the_environment_without_building(
    wheelhouse: Path, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {"requirements.txt": "tinypkg==1.0\n"})
    envs = environments(tmp_path, pick_installer("uv"), wheelhouse)
    digest = envs.digest_for(app)
    assert digest is not None and envs.installs == 0
    assert not (tmp_path / "venvs").exists()
    env = envs.ensure(app)
    assert env is not None and env.digest == digest
    assert envs.digest_for(write(tmp_path / "bare", {"app.py": ""})) is None
    named = environments(tmp_path, pick_installer("uv"), wheelhouse, lockfile="missing.txt")
    assert named.digest_for(app) is None  # not in that revision: nothing to name
