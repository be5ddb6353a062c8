"""Every common way to pin as found in the wild, into real environments with uv and
pip: pdm.lock, pylock.toml (PEP 751), groups and extras, requirements with the
project itself in them; inconsistent locks refused with one line."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from entrypoint.depspec import SpecKind, detect
from entrypoint.environments import Environments, InstallOptions
from entrypoint.errors import InstallError
from entrypoint.installers import pick_installer
from entrypoint.requirements import read
from tests.test_environments import INSTALLERS, installed, write
from tests.wheels import build_wheel, file_hash


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    house = tmp_path_factory.mktemp("formats-wheels")
    build_wheel(house, "tinydep", "1.0")
    build_wheel(house, "tinypkg", "1.0", ("tinydep>=1",))
    build_wheel(house, "tinypkg", "2.0", ("tinydep>=1",))
    build_wheel(house, "devtool", "1.0")
    return house


def envs(home: Path, installer: str, wheels: Path, **options: tuple[str, ...]) -> Environments:
    settings = InstallOptions(
        None, None, ("--no-index", "--find-links", str(wheels)), timeout=300, **options
    )
    return Environments(
        home / "venvs", home / "cache", pick_installer(installer), settings, threading.Event()
    )


def _hash(wheels: Path, name: str, version: str) -> str:
    return file_hash(wheels / f"{name}-{version}-py3-none-any.whl")


def pdm_files(wheels: Path, pin: str = "1.0") -> dict[str, str]:
    entries = ""
    for name, version, groups in (
        ("tinypkg", "2.0", "default"),
        ("tinydep", "1.0", "default"),
        ("devtool", "1.0", "dev"),
    ):
        entries += (
            f'[[package]]\nname = "{name}"\nversion = "{version}"\ngroups = ["{groups}"]\n'
            f'files = [{{file = "{name}-{version}-py3-none-any.whl", '
            f'hash = "{_hash(wheels, name, version)}"}}]\n\n'
        )
    lock = '[metadata]\ngroups = ["default", "dev"]\nstrategy = ["inherit_metadata"]\n\n'
    pyproject = f'[project]\nname = "app"\nversion = "0"\ndependencies = ["tinypkg>={pin}"]\n'
    return {"pdm.lock": lock + entries, "pyproject.toml": pyproject}


def pylock_files(wheels: Path) -> dict[str, str]:
    def package(name: str, version: str, marker: str | None = None) -> str:
        digest = _hash(wheels, name, version).removeprefix("sha256:")
        text = f'[[packages]]\nname = "{name}"\nversion = "{version}"\n'
        text += f"marker = {marker!r}\n" if marker else ""
        wheel = f"{name}-{version}-py3-none-any.whl"
        return text + f'wheels = [{{ name = "{wheel}", hashes = {{ sha256 = "{digest}" }} }}]\n\n'

    lock = 'lock-version = "1.0"\ncreated-by = "hand"\ndependency-groups = ["dev"]\n\n'
    lock += package("tinypkg", "2.0") + package("tinydep", "1.0")
    lock += package("devtool", "1.0", "'dev' in dependency_groups")
    return {"pylock.toml": lock}


@pytest.mark.parametrize("installer", INSTALLERS)
@pytest.mark.parametrize(
    ("files", "kind"), [(pdm_files, SpecKind.PDM_LOCK), (pylock_files, SpecKind.PYLOCK)]
)
def test_locks_install_their_main_set_and_groups_when_asked(
    files: object, kind: SpecKind, installer: str, wheels: Path, tmp_path: Path
) -> None:
    assert callable(files)
    app = write(tmp_path / "app", files(wheels))
    spec = detect(app, None, None)
    assert spec is not None and spec.kind is kind
    main = envs(tmp_path / "main", installer, wheels).ensure(app)
    assert main is not None
    assert installed(main.path) == {"tinypkg": "2.0", "tinydep": "1.0"}
    dev = envs(tmp_path / "dev", installer, wheels, groups=("dev",)).ensure(app)
    assert dev is not None and dev.digest != main.digest  # the groups are in the digest
    assert installed(dev.path) == {"tinypkg": "2.0", "tinydep": "1.0", "devtool": "1.0"}
    with pytest.raises(InstallError, match=r"no .*'docs'"):
        envs(tmp_path / "docs", installer, wheels, groups=("docs",)).ensure(app)


def test_a_pdm_lock_out_of_date_with_its_pyproject_is_refused(wheels: Path, tmp_path: Path) -> None:
    app = write(tmp_path / "app", pdm_files(wheels, pin="3.0"))
    with pytest.raises(InstallError) as caught:
        envs(tmp_path, "uv", wheels).ensure(app)
    assert str(caught.value) == (
        "pdm.lock is out of date with pyproject.toml (tinypkg 2.0 is not >=3.0): run pdm lock"
    )
    assert not (tmp_path / "venvs").exists() or not any((tmp_path / "venvs").iterdir())


def test_uv_extras_and_groups_from_the_lock(wheels: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"
    lock = (
        'version = 1\nrequires-python = ">=3.9"\n\n'
        '[[package]]\nname = "app"\nversion = "0"\nsource = { virtual = "." }\n'
        'dependencies = [{ name = "tinydep" }]\n\n'
        '[package.optional-dependencies]\nweb = [{ name = "tinypkg" }]\n\n'
        '[package.dev-dependencies]\ndev = [{ name = "devtool" }]\n\n'
    )
    for name, version, deps in (
        ("tinydep", "1.0", ""),
        ("tinypkg", "2.0", 'dependencies = [{ name = "tinydep" }]\n'),
        ("devtool", "1.0", ""),
    ):
        wheel = wheels / f"{name}-{version}-py3-none-any.whl"
        lock += (
            f'[[package]]\nname = "{name}"\nversion = "{version}"\n'
            f'source = {{ registry = "{wheels}" }}\n{deps}'
            f'wheels = [{{ path = "{wheel}", hash = "{file_hash(wheel)}" }}]\n\n'
        )
    pyproject = (
        '[project]\nname = "app"\nversion = "0"\nrequires-python = ">=3.9"\n'
        'dependencies = ["tinydep"]\n[project.optional-dependencies]\nweb = ["tinypkg"]\n'
        '[dependency-groups]\ndev = ["devtool"]\n'
    )
    write(app, {"uv.lock": lock, "pyproject.toml": pyproject})
    for installer in INSTALLERS:
        plain = envs(tmp_path / installer / "plain", installer, wheels).ensure(app)
        assert plain is not None and installed(plain.path) == {"tinydep": "1.0"}
        both = envs(
            tmp_path / installer / "both", installer, wheels, groups=("dev",), extras=("web",)
        ).ensure(app)
        assert both is not None
        assert installed(both.path) == {"tinydep": "1.0", "tinypkg": "2.0", "devtool": "1.0"}


def test_requirements_keep_the_project_out_of_the_shared_layer(tmp_path: Path) -> None:
    release = tmp_path / "release"
    write(
        release,
        {
            "requirements.txt": (
                "-r deps/base.txt \\\n  # joined continuation, then a comment\n"
                "-e .\n./libs/tool[cli]\n--find-links ./wheels\n./wheels/x-1.0-py3-none-any.whl\n"
            ),
            "deps/base.txt": "-c ../constraints.txt\ntinypkg ; python_version >= '3'  # why\n",
            "constraints.txt": "tinypkg==1.0\n",
            "libs/tool/pyproject.toml": "",
            "wheels/x-1.0-py3-none-any.whl": "",
        },
    )
    found = read(release, release / "requirements.txt")
    real = release.resolve()
    assert found.lines == [
        f"-c {real / 'constraints.txt'}",
        "tinypkg ; python_version >= '3'",
        f"--find-links {real / 'wheels'}",
        str(real / "wheels" / "x-1.0-py3-none-any.whl"),
    ]
    assert [(p.path, p.editable) for p in found.projects] == [
        (real, True),
        (real / "libs" / "tool", False),
    ]
    assert found.files == [
        real / "requirements.txt",
        real / "deps" / "base.txt",
        real / "constraints.txt",
    ]
    write(release, {"requirements.txt": "-e ../outside\n"})
    with pytest.raises(InstallError, match=r"local project refused: .* leads outside"):
        read(release, release / "requirements.txt")


def test_the_nearest_workspace_lock_that_covers_the_app_is_found(tmp_path: Path) -> None:
    member = '[project]\nname = "{name}"\nversion = "0"\ndependencies = ["x"]\n'
    lock = (
        'version = 1\n[[package]]\nname = "{name}"\nversion = "0"\n'
        'source = {{ editable = "{path}" }}\n'
    )
    repo = write(
        tmp_path / "repo",
        {
            "pyproject.toml": (
                '[tool.uv.workspace]\nmembers = ["packages/*"]\nexclude = ["packages/old"]\n'
            ),
            "uv.lock": lock.format(name="api", path="packages/api"),
            "packages/api/pyproject.toml": member.format(name="api"),
            "packages/old/pyproject.toml": member.format(name="old"),
            "tools/x/pyproject.toml": member.format(name="x"),
        },
    )
    spec = detect(repo / "packages" / "api", None, None, repo)
    assert spec is not None and spec.kind is SpecKind.UV_LOCK
    assert (spec.lock_dir, spec.member) == (repo, "api")
    assert [p.path for p in spec.projects] == [(repo / "packages" / "api").resolve()]
    for outside_workspace in ("packages/old", "tools/x"):
        spec = detect(repo / outside_workspace, None, None, repo)
        assert spec is not None and spec.kind is SpecKind.PYPROJECT and not spec.locked
    named = detect(repo / "packages" / "api", "../../uv.lock", None, repo)
    assert named is not None and named.member == "api" and named.lock_dir == repo
    with pytest.raises(InstallError, match=r"uv\.lock does not lock the project x"):
        detect(repo / "tools" / "x", "../../uv.lock", None, repo)


@pytest.mark.parametrize(
    ("files", "package", "locked"),
    [
        ({"pyproject.toml": "[tool.ruff]\nline-length = 100\n"}, False, True),
        ({"pyproject.toml": '[project]\nname = "a"\nversion = "0"\n'}, False, True),
        (
            {"pyproject.toml": '[project]\nname = "a"\nversion = "0"\ndependencies = ["x"]\n'},
            False,
            False,
        ),
        (
            {
                "pyproject.toml": '[build-system]\nrequires = ["setuptools"]\n',
                "setup.py": "from setuptools import setup\nsetup(install_requires=['x'])\n",
            },
            True,
            False,
        ),
        (
            {
                "pyproject.toml": '[project]\nname = "a"\nversion = "0"\n'
                "[tool.uv]\npackage = false\n"
                '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
            },
            False,
            True,
        ),
    ],
)
def test_a_pyproject_alone_is_a_package_and_unlocked_only_when_it_says_so(
    files: dict[str, str], package: bool, locked: bool, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", files)
    spec = detect(app, None, None)
    assert spec is not None and spec.kind is SpecKind.PYPROJECT
    assert (bool(spec.projects), spec.locked) == (package, locked)
