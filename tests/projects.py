"""Python projects as they are laid out in the wild, made locally for the tests.

Each is a package with a build system: a PEP 517/660 backend small enough to ship
inside the project (`backend-path`), so installing it needs no index. Its web command
is the project's own console script, which answers with the code's location, the
package's metadata version and the dependency it imported.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from entrypoint.installers import pick_installer
from tests.wheels import file_hash

BACKEND = '''\
"""A build backend for tests: wheels and editable wheels of a pure-Python project."""
import base64, hashlib, os, tomllib, zipfile


def _meta():
    with open("pyproject.toml", "rb") as handle:
        data = tomllib.load(handle)
    project = data.get("project") or data["tool"]["poetry"]
    deps = project.get("dependencies", [])
    return project["name"], project["version"], deps if isinstance(deps, list) else [], (
        project.get("scripts") or {}
    )


def _wheel(directory, files):
    name, version, deps, scripts = _meta()
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = "".join(
        [f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n"]
        + [f"Requires-Dist: {dep}\\n" for dep in deps]
    ).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    points = "".join(f"{key} = {value}\\n" for key, value in scripts.items())
    files[f"{info}/entry_points.txt"] = f"[console_scripts]\\n{points}".encode()
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\\n"
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\\n").encode()
    wheel = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, wheel), "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def _source():
    return os.path.abspath("src" if os.path.isdir("src") else ".")


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _meta()[0].replace("-", "_")
    return _wheel(wheel_directory, {f"_{name}_editable.pth": (_source() + "\\n").encode()})


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {}
    for top, dirs, names in os.walk(_source()):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for found in names:
            path = os.path.join(top, found)
            if found.endswith(".py") and found != "_backend.py":
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, _source())] = handle.read()
    return _wheel(wheel_directory, files)


def get_requires_for_build_wheel(config_settings=None):
    return []


get_requires_for_build_editable = get_requires_for_build_wheel
'''

BUILD_SYSTEM = '[build-system]\nrequires = []\nbuild-backend = "_backend"\nbackend-path = ["."]\n'

WEB = '''\
"""The app's web command: what it runs, from where, with which dependency."""
import importlib.metadata
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tinypkg

MESSAGE = {message!r}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        revision = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]
        version = importlib.metadata.version("webapp")
        body = (
            f"{{MESSAGE}} webapp={{version}} tinypkg={{tinypkg.VERSION}} file={{__file__}} "
            f"from revision {{revision}}\\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def main():
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def package(message: str, prefix: str = "") -> dict[str, str]:
    """The `webapp` package in a src/ layout, with its in-tree build backend."""
    return {
        f"{prefix}_backend.py": BACKEND,
        f"{prefix}src/webapp/__init__.py": "",
        f"{prefix}src/webapp/web.py": WEB.format(message=message),
        f"{prefix}Procfile": "web: webapp-serve\n",
    }


def pep621(dependencies: list[str]) -> str:
    return (
        '[project]\nname = "webapp"\nversion = "1.2.3"\nrequires-python = ">=3.9"\n'
        f"dependencies = {json.dumps(dependencies)}\n"
        '[project.scripts]\nwebapp-serve = "webapp.web:main"\n' + BUILD_SYSTEM
    )


def uv_workspace(message: str, pin: str) -> dict[str, str]:
    """The app as the member `backend/` of a uv workspace at the repository's root."""
    return {
        "pyproject.toml": '[tool.uv.workspace]\nmembers = ["backend"]\n',
        "backend/pyproject.toml": pep621([f"tinypkg=={pin}"]),
        **package(message, "backend/"),
    }


def uv_lock(work: Path, wheelhouse: Path) -> str:
    """The workspace's uv.lock, made by uv from the local wheels."""
    uv = pick_installer("uv").uv_path
    assert uv is not None
    subprocess.run(
        [uv, "lock", "--no-index", "--find-links", str(wheelhouse)],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return (work / "uv.lock").read_text()


def poetry_project(message: str, pin: str, wheelhouse: Path) -> dict[str, str]:
    """A poetry project in package mode, with the poetry.lock poetry would write."""
    pyproject = (
        '[tool.poetry]\nname = "webapp"\nversion = "1.2.3"\n'
        'packages = [{ include = "webapp", from = "src" }]\n'
        "[tool.poetry.dependencies]\n"
        f'python = "^3.9"\ntinypkg = "{pin}"\n'
        '[tool.poetry.scripts]\nwebapp-serve = "webapp.web:main"\n'
        '[tool.poetry.group.dev.dependencies]\ndevtool = "1.0"\n' + BUILD_SYSTEM
    )
    lock = ""
    for name, version, deps in (("tinydep", "1.0", ""), ("tinypkg", pin, 'tinydep = ">=1"\n')):
        wheel = wheelhouse / f"{name}-{version}-py3-none-any.whl"
        lock += (
            f'[[package]]\nname = "{name}"\nversion = "{version}"\noptional = false\n'
            f'python-versions = "*"\nfiles = [\n    {{file = "{wheel.name}", '
            f'hash = "{file_hash(wheel)}"}},\n]\n'
        )
        lock += f"\n[package.dependencies]\n{deps}\n" if deps else "\n"
    lock += '[metadata]\nlock-version = "2.0"\npython-versions = "^3.9"\ncontent-hash = "0"\n'
    return {"pyproject.toml": pyproject, "poetry.lock": lock, **package(message)}


def requirements_project(message: str, pin: str) -> dict[str, str]:
    """requirements.txt with an include, a constraints file and the project itself."""
    return {
        "requirements.txt": "-r requirements/base.txt\n-c constraints.txt\n-e .\n",
        "requirements/base.txt": "tinypkg  # the one dependency\n",
        "constraints.txt": f"tinypkg=={pin}\n",
        "pyproject.toml": pep621(["tinydep>=1"]),
        **package(message),
    }
