"""Choosing the release tag to follow (REPO_REF=semver:...) from a ref listing."""

from __future__ import annotations

import pytest

from entrypoint import tags
from entrypoint.config import load_settings
from entrypoint.errors import ConfigError

SHA = {name: f"{index:040x}" for index, name in enumerate("abcdefghij", start=1)}


def listing(*names: str) -> dict[str, str]:
    """An ls-remote listing: each tag on its own commit, in the order given."""
    return {f"refs/tags/{name}": sha for name, sha in zip(names, SHA.values(), strict=False)}


def chosen(spec: str, refs: dict[str, str]) -> str | None:
    tag = tags.highest(tags.parse_range(f"semver:{spec}"), tags.tags_in(refs))
    return None if tag is None else tag.name


def test_highest_in_range_with_or_without_v_prefix() -> None:
    refs = listing("v1.3.9", "v1.4.0", "1.5.0", "v1.10.1", "v2.0.0")
    assert chosen(">=1.4,<2", refs) == "v1.10.1"  # versions compare as versions, not text
    assert chosen(">=1.4,<1.10", refs) == "1.5.0"
    assert chosen("~=1.4.0", refs) == "v1.4.0"
    assert chosen("", refs) == "v2.0.0"  # no specifier: the highest release


def test_pre_releases_only_when_the_specifier_names_one() -> None:
    refs = listing("v1.4.0", "v1.5.0rc1", "v1.6.0.dev2", "v2.0.0b1")
    assert chosen(">=1.4,<2", refs) == "v1.4.0"
    assert chosen(">=1.4,<2,!=1.5.0rc1", refs) == "v1.4.0"  # != names none to admit
    assert chosen(">=1.5.0rc1,<2", refs) == "v1.6.0.dev2"
    assert chosen(">=1.4,<3", listing("v2.0.0b1")) is None  # not admitted for want of a final
    assert chosen(">=2.0.0a1", refs) == "v2.0.0b1"


def test_tags_that_are_not_versions_and_branches_are_ignored() -> None:
    refs = {
        **listing("latest", "release-1.9", "v1.4.0", "stable", "v1.x"),
        "refs/heads/1.9.0": SHA["j"],
        "HEAD": SHA["j"],
    }
    assert chosen(">=1.4,<2", refs) == "v1.4.0"
    assert [tag.name for tag in tags.tags_in(refs)] == ["v1.4.0"]


def test_annotated_tag_resolves_to_its_commit() -> None:
    refs = {
        "refs/tags/v1.5.0": SHA["a"],  # the tag object
        "refs/tags/v1.5.0^{}": SHA["b"],  # the commit it names
        "refs/tags/v1.4.0": SHA["c"],  # lightweight: the commit itself
    }
    tag = tags.highest(tags.parse_range("semver:>=1.4"), tags.tags_in(refs))
    assert tag is not None
    assert (tag.name, tag.sha, tag.ref) == ("v1.5.0", SHA["b"], "refs/tags/v1.5.0")


def test_no_match_says_what_the_remote_has() -> None:
    refs = listing("v1.0.0", "v2.0.0", "latest")
    assert chosen(">=1.4,<2", refs) is None
    found = tags.tags_in(refs)
    message = tags.no_match("semver:>=1.4,<2", found)
    assert message == (
        "no tag matches REPO_REF=semver:>=1.4,<2: "
        "the remote's highest version tag is v2.0.0 (2 in all)"
    )
    assert "no version tags" in tags.no_match("semver:>=1", [])


def test_equal_versions_pick_the_same_tag_every_time() -> None:
    assert chosen(">=1", listing("1.5", "v1.5.0")) == chosen(">=1", listing("v1.5.0", "1.5"))


@pytest.mark.parametrize(
    "ref", ["semver:>=1.4,<2", "semver: >= 1.4, < 2", "semver:==1.*", "semver:"]
)
def test_a_range_is_a_valid_repo_ref(ref: str) -> None:
    settings = load_settings({"REPO_URL": "https://example.invalid/app.git", "REPO_REF": ref})
    assert settings.repo_ref == ref.strip()


@pytest.mark.parametrize("spec", [">>1", "1.4", ">=1.4;<2", "latest"])
def test_a_bad_specifier_fails_at_config_time(spec: str) -> None:
    env = {"REPO_URL": "https://example.invalid/app.git", "REPO_REF": f"semver:{spec}"}
    with pytest.raises(ConfigError, match=r"^REPO_REF: .* is not a PEP 440 version specifier"):
        load_settings(env)
