"""Turn lockfiles into pinned requirement lines, so any installer can honour them.

poetry.lock, uv.lock (when uv itself is absent) and Pipfile.lock all become
`name==version ; marker --hash=...` lines, installed with --no-deps: the locked
set exactly, no resolution. Which packages a lock needs here is the closure of
the project's main dependencies, following only edges whose markers hold on
this interpreter and platform.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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


@dataclass(frozen=True)
class Selection:
    """What to install beside the main dependencies (LIVE_PULL_INSTALL_GROUPS/_EXTRAS)."""

    groups: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()


MAIN_ONLY = Selection()

Result = TypeVar("Result")


def _malformed_is_refused(read: Callable[..., Result]) -> Callable[..., Result]:
    """A lock is repository content: one whose shape is not what its tool writes (a
    missing key, a table where a string goes) refuses the revision with one line,
    never an unexpected error."""

    @functools.wraps(read)
    def checked(*args: Any, **kwargs: Any) -> Result:
        try:
            return read(*args, **kwargs)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise InstallError(f"lockfile not understood ({type(exc).__name__}: {exc})") from exc

    return checked


NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
HASH = re.compile(r"sha256:[0-9a-fA-F]{64}|sha384:[0-9a-fA-F]{96}|sha512:[0-9a-fA-F]{128}")


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


@_malformed_is_refused
def pipfile_pins(path: Path, selection: Selection = MAIN_ONLY) -> list[Pin]:
    """The `default` section (and each group named, as a section): every pin with its
    hashes and markers; local paths (`"path": "."`) are the release's project layer."""
    data = _load(path, json.loads)
    pins = []
    for name, entry in sorted(_pipfile_entries(data, selection).items()):
        if "path" in entry or "file" in entry:
            continue
        version = str(entry.get("version", "")).removeprefix("==")
        if not version:
            raise InstallError(f"Pipfile.lock: {name} has no pinned version")
        pins.append(Pin(name, version, tuple(entry.get("hashes", ())), entry.get("markers")))
    return pins


@_malformed_is_refused
def pipfile_local_projects(path: Path) -> list[tuple[str, bool]]:
    """Path entries of the `default` section: (path relative to the lock, editable)."""
    entries = _load(path, json.loads).get("default", {})
    return [
        (str(entry["path"]), bool(entry.get("editable")))
        for _, entry in sorted(entries.items())
        if isinstance(entry, dict) and isinstance(entry.get("path"), str)
    ]


def _pipfile_entries(data: Mapping[str, Any], selection: Selection) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for section in ("default", *selection.groups):
        if section not in data:
            raise InstallError(f"Pipfile.lock has no section {section!r}")
        entries.update(data[section])
    return entries


# -- poetry.lock and uv.lock ----------------------------------------------------------


@_malformed_is_refused
def poetry_pins(lock: Path, pyproject: Path, selection: Selection = MAIN_ONLY) -> list[Pin]:
    """The closure of the main dependencies (and the groups and extras selected)."""
    packages = _load(lock, tomllib.loads).get("package", [])
    graph = {normalize(p["name"]): p for p in packages}
    data = _load(pyproject, tomllib.loads)
    roots = _poetry_roots(data, selection)
    _locked_versions_fit(data, graph, "poetry.lock", "poetry lock")
    needed = _closure(roots, lambda name: _poetry_edges(graph.get(name, {})), graph)
    return [_poetry_pin(graph[name]) for name in sorted(needed) if not _poetry_local(graph[name])]


def _poetry_roots(pyproject: Mapping[str, Any], selection: Selection) -> dict[str, str | None]:
    roots = _pep621_roots(pyproject, selection)
    poetry = pyproject.get("tool", {}).get("poetry", {})
    chosen = {normalize(n) for e in selection.extras for n in poetry.get("extras", {}).get(e, [])}
    for name, spec in poetry.get("dependencies", {}).items():
        optional = isinstance(spec, dict) and spec.get("optional")
        if normalize(name) != "python" and (not optional or normalize(name) in chosen):
            roots[normalize(name)] = spec.get("markers") if isinstance(spec, dict) else None
    groups = poetry.get("group", {})
    for group in selection.groups:
        if group not in groups and group not in pyproject.get("dependency-groups", {}):
            raise InstallError(f"pyproject.toml has no dependency group {group!r}")
        for name, spec in groups.get(group, {}).get("dependencies", {}).items():
            roots[normalize(name)] = spec.get("markers") if isinstance(spec, dict) else None
    return roots


def _pep621_roots(pyproject: Mapping[str, Any], selection: Selection) -> dict[str, str | None]:
    """[project] dependencies, the extras selected and PEP 735 groups selected."""
    roots: dict[str, str | None] = {}
    for spec in project_requirements(pyproject, selection):
        req = _requirement(spec)
        roots[normalize(req.name)] = str(req.marker) if req.marker else None
    return roots


@_malformed_is_refused
def project_requirements(pyproject: Mapping[str, Any], selection: Selection) -> list[str]:
    """[project] dependencies, with the extras and (PEP 735) groups selected."""
    project = pyproject.get("project", {})
    specs = [str(spec) for spec in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    groups = pyproject.get("dependency-groups", {})
    for extra in selection.extras:
        if extra not in optional and extra not in pyproject.get("tool", {}).get("poetry", {}).get(
            "extras", {}
        ):
            raise InstallError(f"pyproject.toml has no extra {extra!r}")
        specs += [str(spec) for spec in optional.get(extra, [])]
    for group in selection.groups:
        specs += [str(spec) for spec in groups.get(group, []) if isinstance(spec, str)]
    return specs


def _locked_versions_fit(
    pyproject: Mapping[str, Any], graph: Mapping[str, Any], lock: str, fix: str
) -> None:
    """Each [project] dependency's locked version is in its range, or the lock is out
    of date with pyproject.toml (the revision is refused, naming the package)."""
    for spec in pyproject.get("project", {}).get("dependencies", []):
        req = _requirement(str(spec))
        package = graph.get(normalize(req.name))
        if package is None or not req.specifier or "version" not in package:
            continue  # missing: _closure says so; no range: nothing to compare
        if not req.specifier.contains(str(package["version"]), prereleases=True):
            raise InstallError(
                f"{lock} is out of date with pyproject.toml ({req.name} "
                f"{package['version']} is not {req.specifier}): run {fix}"
            )


def _poetry_local(package: Mapping[str, Any]) -> bool:
    return package.get("source", {}).get("type") in ("directory", "file")


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


@_malformed_is_refused
def uv_pins(lock: Path, project: str | None, selection: Selection = MAIN_ONLY) -> list[Pin]:
    """The packages `project` (a workspace member, or the lock's own project) needs
    from an index, each pinned with its hashes; local ones are the release's layer."""
    graph = _uv_graph(lock)
    needed = _uv_needed(graph, project, selection)
    return [_uv_pin(graph[name]) for name in sorted(needed) if not _uv_local(graph[name])]


@_malformed_is_refused
def uv_local_projects(
    lock: Path, project: str | None, selection: Selection = MAIN_ONLY
) -> list[tuple[str, bool]]:
    """The local packages (workspace members, path dependencies) `project` needs, the
    project included: (path relative to the lock, editable); virtual ones are not
    installed at all."""
    graph = _uv_graph(lock)
    found = []
    for name in sorted(_uv_needed(graph, project, selection) | {normalize(project or "")}):
        source = graph.get(name, {}).get("source", {})
        for key in ("editable", "directory"):
            if isinstance(source.get(key), str):
                found.append((source[key], key == "editable"))
    return found


@_malformed_is_refused
def uv_lock_problem(lock: Path, project: str | None, dependencies: Iterable[str]) -> str | None:
    """Why uv.lock is out of date with the project's declared dependencies, or None.

    The check uv makes (`requires-dist` as locked against pyproject.toml), done here
    without an index: `uv sync --locked` may re-resolve to tell, and an index that is
    down must not refuse a lock that is fine. Names, extras and version ranges are
    compared; markers are not (uv rewrites them), nor the optional dependencies."""
    package = _uv_graph(lock).get(normalize(project or ""), {})
    if "requires-dist" not in package.get("metadata", {}):
        return None  # nothing recorded to compare against
    locked = {
        _uv_requirement_key(entry)
        for entry in package["metadata"]["requires-dist"]
        if "extra ==" not in str(entry.get("marker", ""))
    }
    declared = {_requirement_key(_requirement(spec)) for spec in dependencies}
    if locked == declared:
        return None
    differs = sorted({name for name, *_ in declared ^ locked})
    return f"uv.lock is out of date with pyproject.toml ({', '.join(differs[:3])}): run uv lock"


def _requirement_key(req: Requirement) -> tuple[str, str, str]:
    return normalize(req.name), ",".join(sorted(req.extras)), str(req.specifier)


def _uv_requirement_key(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    text = str(entry.get("name", ""))
    if entry.get("extra"):
        text += f"[{','.join(entry['extra'])}]"
    return _requirement_key(_requirement(text + str(entry.get("specifier", ""))))


def _uv_graph(lock: Path) -> dict[str, Any]:
    return {normalize(p["name"]): p for p in _load(lock, tomllib.loads).get("package", [])}


def _uv_needed(graph: Mapping[str, Any], project: str | None, selection: Selection) -> set[str]:
    name = normalize(project or "")
    if name not in graph:
        raise InstallError(f"uv.lock does not lock the project {project or '(unnamed)'}")
    package = graph[name]
    roots = _uv_edges(package, graph)
    for table, chosen, what in (
        ("optional-dependencies", selection.extras, "extra"),
        ("dev-dependencies", selection.groups, "dependency group"),
    ):
        for key in chosen:
            if key not in package.get(table, {}):
                raise InstallError(f"uv.lock has no {what} {key!r} for {project}")
            roots.update(_uv_edges({"dependencies": package[table][key]}, graph))
    needed = _closure(roots, lambda dep: _uv_edges(graph.get(dep, {}), graph), graph)
    needed.discard(name)
    return needed


def _uv_local(package: Mapping[str, Any]) -> bool:
    source = package.get("source", {})
    return isinstance(source, dict) and any(key in source for key in LOCAL_SOURCES)


def _uv_edges(
    package: Mapping[str, Any], graph: Mapping[str, Any], seen: frozenset[str] = frozenset()
) -> dict[str, str | None]:
    """A package's dependencies; one asked for with extras (`uvicorn[standard]`) brings
    what those extras need as well."""
    edges: dict[str, str | None] = {}
    for dep in package.get("dependencies", []):
        name = normalize(dep["name"])
        edges[name] = dep.get("marker")
        for extra in dep.get("extra", []):
            key = f"{name}[{extra}]"
            wanted = graph.get(name, {}).get("optional-dependencies", {}).get(extra, [])
            if key not in seen:
                edges.update(_uv_edges({"dependencies": wanted}, graph, seen | {key}))
    return edges


def _uv_pin(package: Mapping[str, Any]) -> Pin:
    artifacts = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
    return Pin(
        package["name"], package["version"], tuple(a["hash"] for a in artifacts if "hash" in a)
    )


# -- pdm.lock -------------------------------------------------------------------------


@_malformed_is_refused
def pdm_pins(lock: Path, pyproject: Path, selection: Selection = MAIN_ONLY) -> list[Pin]:
    """pdm's groups: `default`, and each group or extra selected (pdm names an extra's
    packages by the extra). A lock that records no groups per package (an older pdm) is
    followed from the project's dependencies instead."""
    data = _load(lock, tomllib.loads)
    packages = [p for p in data.get("package", []) if not _pdm_local(p)]
    known = set(data.get("metadata", {}).get("groups", ["default"]))
    wanted = {"default", *selection.groups, *selection.extras}
    missing = sorted(wanted - known)
    if missing:
        raise InstallError(f"pdm.lock has no group {missing[0]!r}: run pdm lock with it")
    graph = {normalize(p["name"]): p for p in packages}
    _locked_versions_fit(_load(pyproject, tomllib.loads), graph, "pdm.lock", "pdm lock")
    if all("groups" in p for p in packages):
        chosen = [p for p in packages if wanted & set(p["groups"]) and _holds(p.get("marker"))]
    else:
        roots = _pep621_roots(_load(pyproject, tomllib.loads), selection)
        needed = _closure(roots, lambda name: _pdm_edges(graph.get(name, {})), graph)
        chosen = [graph[name] for name in sorted(needed)]
    return [_pdm_pin(p) for p in sorted(chosen, key=lambda p: normalize(p["name"]))]


def _pdm_edges(package: Mapping[str, Any]) -> dict[str, str | None]:
    edges: dict[str, str | None] = {}
    for spec in package.get("dependencies", []):
        req = _requirement(str(spec))
        edges[normalize(req.name)] = str(req.marker) if req.marker else None
    return edges


def _pdm_local(package: Mapping[str, Any]) -> bool:
    return any(key in package for key in ("path", "editable", "url", "git"))


def _pdm_pin(package: Mapping[str, Any]) -> Pin:
    hashes = tuple(f["hash"] for f in package.get("files", []) if "hash" in f)
    return Pin(package["name"], package["version"], hashes)


# -- pylock.toml (PEP 751) ------------------------------------------------------------


@_malformed_is_refused
def pylock_pins(lock: Path, selection: Selection = MAIN_ONLY) -> list[Pin]:
    """Every package whose marker holds here, with the extras and groups selected (a
    pylock is resolved already: nothing to follow). Local directories are the
    release's project layer; a package from a VCS or an archive URL is refused."""
    data = _load(lock, tomllib.loads)
    pins = []
    for package in _pylock_chosen(data, selection):
        if "directory" in package:
            continue
        if "vcs" in package or "archive" in package or "version" not in package:
            raise InstallError(f"pylock.toml: {package.get('name')} is not from an index")
        artifacts = [
            *package.get("wheels", []),
            *([package["sdist"]] if "sdist" in package else []),
        ]
        hashes = tuple(
            f"{algorithm}:{value}"
            for artifact in artifacts
            for algorithm, value in sorted(artifact.get("hashes", {}).items())
            if algorithm in ("sha256", "sha384", "sha512")
        )
        pins.append(Pin(package["name"], package["version"], hashes))
    return pins


@_malformed_is_refused
def pylock_local_projects(lock: Path, selection: Selection = MAIN_ONLY) -> list[tuple[str, bool]]:
    """Its `directory` packages: (path relative to the lock, editable)."""
    return [
        (str(p["directory"]["path"]), bool(p["directory"].get("editable")))
        for p in _pylock_chosen(_load(lock, tomllib.loads), selection)
        if isinstance(p.get("directory"), dict) and "path" in p["directory"]
    ]


def _pylock_chosen(data: Mapping[str, Any], selection: Selection) -> list[Mapping[str, Any]]:
    for key, chosen in (("extras", selection.extras), ("dependency-groups", selection.groups)):
        missing = sorted(set(chosen) - set(data.get(key, [])))
        if missing:
            raise InstallError(f"pylock.toml has no {key} entry {missing[0]!r}")
    groups = {*data.get("default-groups", []), *selection.groups}
    context = {
        "extra": "",
        "extras": frozenset(selection.extras),
        "dependency_groups": frozenset(groups),
    }
    return [p for p in data.get("packages", []) if _holds(p.get("marker"), context)]


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


def _holds(marker: str | None, context: Mapping[str, Any] | None = None) -> bool:
    if not marker:
        return True
    try:
        if context is None:
            return Marker(marker).evaluate({"extra": ""})
        return Marker(marker).evaluate(dict(context), "lock_file")
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
