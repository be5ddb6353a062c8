"""Removing what a collection no longer keeps: never half of it under its own name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from entrypoint import files
from entrypoint.files import TMP_PREFIX, remove_aside
from entrypoint.releases import Releases


def a_release(root: Path, name: str) -> Path:
    tree = root / "releases" / name
    (tree / "app").mkdir(parents=True)
    for n in range(5):
        (tree / "app" / f"module{n}.py").write_text("x = 1\n")
    (tree / "Procfile").write_text("web: python app.py\n")
    return tree


def test_a_removal_cut_off_midway_leaves_nothing_under_the_trees_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = a_release(tmp_path, "a" * 40)

    def killed_midway(path: Path, *args: Any, **kwargs: Any) -> None:
        (Path(path) / "app" / "module0.py").unlink()  # some of it went, then the kill
        raise OSError("killed")

    monkeypatch.setattr(files.shutil, "rmtree", killed_midway)
    with pytest.raises(OSError, match="killed"):
        remove_aside(tree)
    assert not tree.exists()
    (aside,) = tree.parent.iterdir()
    assert aside.name.startswith(f"{TMP_PREFIX}gone-{tree.name}-")

    monkeypatch.undo()
    assert Releases(tmp_path, ".", ()).collect([]) == []  # swept, not counted as a release
    assert list(tree.parent.iterdir()) == []


def test_what_is_gone_already_or_set_aside_already_is_removed_in_place(tmp_path: Path) -> None:
    remove_aside(tmp_path / "never-there")
    leftover = a_release(tmp_path, f"{TMP_PREFIX}{'b' * 40}-0123abcd")
    remove_aside(leftover)
    assert list(leftover.parent.iterdir()) == []
