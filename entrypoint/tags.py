"""Following release tags: REPO_REF=semver:<a PEP 440 specifier set>, e.g. semver:>=1.4,<2.

The remote's tags are listed in one round trip (ls-remote). A tag whose name is a
version (`v1.5.2` or `1.5.2`) competes if the specifier set contains it; the highest
wins. Pre-releases compete only when the specifier names one (`>=2.0rc1`), as PEP 440
says; never merely because no final release matches. Tags that are not versions are
ignored. An annotated tag stands for the commit it points to (its peeled `^{}` entry).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

PREFIX = "semver:"
TAGS = "refs/tags/"
PEELED = "^{}"
EXAMPLE = "semver:>=1.4,<2"


@dataclass(frozen=True)
class Tag:
    """One version tag on the remote."""

    name: str  # as the remote spells it, e.g. v1.5.2
    version: Version
    sha: str  # the commit it names (an annotated tag peeled)

    @property
    def ref(self) -> str:
        return TAGS + self.name


def is_range(ref: str | None) -> bool:
    """Does REPO_REF ask to follow release tags?"""
    return ref is not None and ref.startswith(PREFIX)


def parse_range(ref: str) -> SpecifierSet:
    """The specifier set of `semver:<specifiers>`; ValueError says what is wrong."""
    text = ref.removeprefix(PREFIX).strip()
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise ValueError(
            f"{text!r} is not a PEP 440 version specifier set (e.g. {EXAMPLE})"
        ) from None


def version_of(name: str) -> Version | None:
    """The version a tag name spells (a `v` prefix allowed), or None."""
    try:
        return Version(name)
    except InvalidVersion:
        return None


def tags_in(listing: Mapping[str, str]) -> list[Tag]:
    """The version tags of an ls-remote listing (ref name -> sha)."""
    found = []
    for ref, sha in listing.items():
        if not ref.startswith(TAGS) or ref.endswith(PEELED):
            continue
        name = ref.removeprefix(TAGS)
        version = version_of(name)
        if version is not None:
            found.append(Tag(name, version, listing.get(ref + PEELED, sha)))
    return found


def admits(spec: SpecifierSet, version: Version) -> bool:
    """Is `version` in range? A pre-release only if the specifier names one."""
    return spec.contains(version, prereleases=bool(spec.prereleases))


def highest(spec: SpecifierSet, tags: Iterable[Tag]) -> Tag | None:
    """The highest tag in range (equal versions: the name decides, so the pick is stable)."""
    matching = [tag for tag in tags if admits(spec, tag.version)]
    return max(matching, key=lambda tag: (tag.version, tag.name), default=None)


def no_match(ref: str, tags: list[Tag]) -> str:
    """Why nothing was chosen, in one line."""
    if not tags:
        return f"no tag matches REPO_REF={ref}: the remote has no version tags"
    top = max(tags, key=lambda tag: (tag.version, tag.name))
    highest = f"the remote's highest version tag is {top.name} ({len(tags)} in all)"
    return f"no tag matches REPO_REF={ref}: {highest}"
