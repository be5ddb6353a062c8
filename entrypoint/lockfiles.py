"""Turn lockfiles into pinned requirement lines, so any installer can honour them.

poetry.lock, uv.lock (when uv itself is absent) and Pipfile.lock all become
`name==version ; marker --hash=...` lines, installed with --no-deps: the locked
set exactly, no resolution. Which packages a lock needs here is the closure of
the project's main dependencies, following only edges whose markers hold on
this interpreter and platform.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from entrypoint.errors import InstallError


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...] = ()
    marker: str | None = None

    def __post_init__(self) -> None:
        """A lockfile is repository content: each value is checked before it becomes a
        requirement line (a newline in a version would add a line of its own)."""
        problem = _pin_problem(self)
        if problem is not None:
            raise InstallError(f"lockfile entry {self.name[:60]!r} refused: {problem}")

    def line(self) -> str:
        text = f"{self.name}=={self.version}"
        if self.marker:
            text += f" ; {self.marker}"
        return text + "".join(f" --hash={digest}" for digest in self.hashes)


NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
HASH = re.compile(r"(?:sha256|sha384|sha512):[0-9a-fA-F]{32,128}")


def _pin_problem(pin: Pin) -> str | None:
    if not isinstance(pin.name, str) or not NAME.fullmatch(pin.name):
        return "not a package name"
    if not isinstance(pin.version, str) or not _is_version(pin.version):
        return f"version {str(pin.version)[:60]!r} is not a version"
    if not all(isinstance(h, str) and HASH.fullmatch(h) for h in pin.hashes):
        return "a hash is not algorithm:hex"
    if pin.marker is not None and not _is_marker(pin.marker):
        return "marker is not an environment marker"
    return None


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return text.strip() == text and "\n" not in text


def _is_marker(text: object) -> bool:
    if not isinstance(text, str) or "\n" in text or "\r" in text:
        return False
    try:
        Marker(text)
    except InvalidMarker:
        return False
    return True


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(pins: Iterable[Pin]) -> str:
    return "".join(pin.line() + "\n" for pin in pins)


# -- Pipfile.lock -------------------------------------------------------------------


def pipfile_pins(path: Path) -> list[Pin]:
    """The `default` section: every pin with its hashes and markers."""
    data = _load(path, json.loads)
    pins = []
    for name, entry in sorted(data.get("default", {}).items()):
        version = str(entry.get("version", "")).removeprefix("==")
        if not version:
            raise InstallError(f"Pipfile.lock: {name} has no pinned version")
        pins.append(Pin(name, version, tuple(entry.get("hashes", ())), entry.get("markers")))
    return pins


# -- poetry.lock and uv.lock ----------------------------------------------------------


def poetry_pins(lock: Path, pyproject: Path) -> list[Pin]:
    packages = _load(lock, tomllib.loads).get("package", [])
    graph = {normalize(p["name"]): p for p in packages}
    roots = _poetry_roots(_load(pyproject, tomllib.loads))
    needed = _closure(roots, lambda name: _poetry_edges(graph.get(name, {})), graph)
    return [_poetry_pin(graph[name]) for name in sorted(needed)]


def _poetry_roots(pyproject: Mapping[str, Any]) -> dict[str, str | None]:
    roots: dict[str, str | None] = {}
    for spec in pyproject.get("project", {}).get("dependencies", []):
        req = _requirement(spec)
        roots[normalize(req.name)] = str(req.marker) if req.marker else None
    poetry_deps = pyproject.get("tool", {}).get("poetry", {}).get("dependencies", {})
    for name, spec in poetry_deps.items():
        if normalize(name) != "python":
            roots[normalize(name)] = spec.get("markers") if isinstance(spec, dict) else None
    return roots


def _poetry_edges(package: Mapping[str, Any]) -> dict[str, str | None]:
    edges: dict[str, str | None] = {}
    for name, spec in package.get("dependencies", {}).items():
        specs = spec if isinstance(spec, list) else [spec]
        markers = [s.get("markers") if isinstance(s, dict) else None for s in specs]
        edges[normalize(name)] = None if None in markers else " or ".join(f"({m})" for m in markers)
    return edges


def _poetry_pin(package: Mapping[str, Any]) -> Pin:
    hashes = tuple(f["hash"] for f in package.get("files", []) if "hash" in f)
    return Pin(package["name"], package["version"], hashes)


LOCAL_SOURCES = ("editable", "directory", "virtual", "path")


def uv_pins(lock: Path, project: str | None) -> list[Pin]:
    """The packages `project` (a workspace member, or the lock's own project) needs
    from an index, each pinned with its hashes; local ones are the release's layer."""
    graph = _uv_graph(lock)
    needed = _uv_needed(graph, project)
    return [_uv_pin(graph[name]) for name in sorted(needed) if not _uv_local(graph[name])]


def uv_local_projects(lock: Path, project: str | None) -> list[tuple[str, bool]]:
    """The local packages (workspace members, path dependencies) `project` needs, the
    project included: (path relative to the lock, editable); virtual ones are not
    installed at all."""
    graph = _uv_graph(lock)
    found = []
    for name in sorted(_uv_needed(graph, project) | {normalize(project or "")}):
        source = graph.get(name, {}).get("source", {})
        for key in ("editable", "directory"):
            if isinstance(source.get(key), str):
                found.append((source[key], key == "editable"))
    return found


def uv_lock_problem(lock: Path, project: str | None, dependencies: Iterable[str]) -> str | None:
    """Why uv.lock is out of date with the project's declared dependencies, or None.

    What uv itself compares (`requires-dist` as locked against pyproject.toml), done
    here without an index: `uv sync --locked` would re-resolve to tell, and an index
    that is down must not refuse a lock that is fine."""
    package = _uv_graph(lock).get(normalize(project or ""), {})
    locked = {
        _uv_requirement_key(entry) for entry in package.get("metadata", {}).get("requires-dist", ())
    }
    declared = {_requirement_key(_requirement(spec)) for spec in dependencies}
    if not package or locked == declared:
        return None
    differs = sorted({name for name, *_ in declared ^ locked})
    return f"uv.lock is out of date with pyproject.toml ({', '.join(differs[:3])}): run uv lock"


def _requirement_key(req: Requirement) -> tuple[str, str, str, str]:
    extras = ",".join(sorted(req.extras))
    return normalize(req.name), extras, str(req.specifier), str(req.marker or "")


def _uv_requirement_key(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    text = str(entry.get("name", ""))
    if entry.get("extra"):
        text += f"[{','.join(entry['extra'])}]"
    text += str(entry.get("specifier", ""))
    if entry.get("marker"):
        text += f" ; {entry['marker']}"
    return _requirement_key(_requirement(text))


def _uv_graph(lock: Path) -> dict[str, Any]:
    return {normalize(p["name"]): p for p in _load(lock, tomllib.loads).get("package", [])}


def _uv_needed(graph: Mapping[str, Any], project: str | None) -> set[str]:
    name = normalize(project or "")
    if name not in graph:
        raise InstallError(f"uv.lock does not lock the project {project or '(unnamed)'}")
    needed = _closure(_uv_edges(graph[name]), lambda dep: _uv_edges(graph.get(dep, {})), graph)
    needed.discard(name)
    return needed


def _uv_local(package: Mapping[str, Any]) -> bool:
    source = package.get("source", {})
    return isinstance(source, dict) and any(key in source for key in LOCAL_SOURCES)


def _uv_edges(package: Mapping[str, Any]) -> dict[str, str | None]:
    return {normalize(d["name"]): d.get("marker") for d in package.get("dependencies", [])}


def _uv_pin(package: Mapping[str, Any]) -> Pin:
    artifacts = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
    return Pin(
        package["name"], package["version"], tuple(a["hash"] for a in artifacts if "hash" in a)
    )


# -- pyproject.toml alone ---------------------------------------------------------------


def project_dependencies(pyproject: Path) -> list[str]:
    """[project] dependencies: what the app needs; its own code runs from the release."""
    return list(_load(pyproject, tomllib.loads).get("project", {}).get("dependencies", []))


# -- shared ---------------------------------------------------------------------------


def _closure(
    roots: Mapping[str, str | None],
    edges_of: Callable[[str], dict[str, str | None]],
    graph: Mapping[str, Any],
) -> set[str]:
    """Every package reachable from roots through edges whose markers hold here."""
    needed: set[str] = set()
    pending = [name for name, marker in roots.items() if _holds(marker)]
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        if name not in graph:
            raise InstallError(f"lockfile does not lock {name}, which is required")
        needed.add(name)
        pending.extend(dep for dep, marker in edges_of(name).items() if _holds(marker))
    return needed


def _holds(marker: str | None) -> bool:
    if not marker:
        return True
    try:
        return Marker(marker).evaluate({"extra": ""})
    except InvalidMarker as exc:
        raise InstallError(f"bad environment marker in lockfile: {marker}") from exc


def _requirement(spec: str) -> Requirement:
    try:
        return Requirement(spec)
    except InvalidRequirement as exc:
        raise InstallError(f"bad requirement in pyproject.toml: {spec}") from exc


def _load(path: Path, parse: Any) -> Any:
    try:
        return parse(path.read_text())
    except (OSError, ValueError) as exc:
        raise InstallError(f"cannot read {path.name}: {exc}") from exc
