"""Fixtures of the fault suite; the tools live beside it (agents, processes, remote,
disk, longwork)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.agents import Launcher
from tests.faults.longwork import SlowWorld

HERE = Path(__file__).parent


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launched = Launcher(tmp_path / "logs")
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launched = Launcher(tmp_path_factory.mktemp("logs"))
    yield launched
    launched.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "long_work: checks work that runs in the background for over a minute"
    )


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """The long-work scenarios go last among the fault tests: their work starts with
    the first fault test and runs in the background while the others run. Under
    pytest-xdist the fault tests are one group, run by one worker in this order: their
    module-scoped agents and the long work are started once."""
    for item in items:
        if _is_fault(item):
            item.add_marker(pytest.mark.xdist_group("faults"))
    slow = [item for item in items if _is_fault(item) and item.get_closest_marker("long_work")]
    if not slow:
        return
    rest = [item for item in items if item not in slow]
    last = max((i for i, item in enumerate(rest) if _is_fault(item)), default=len(rest) - 1)
    items[:] = rest[: last + 1] + slow + rest[last + 1 :]


def _is_fault(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).parents


@pytest.fixture(scope="session")
def slow_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowWorld]:
    world = SlowWorld(tmp_path_factory.mktemp("slow"))
    world.start()
    yield world
    world.close()


@pytest.fixture(autouse=True)
def _long_work_in_background(request: pytest.FixtureRequest) -> None:
    """The first fault test starts the long work that the last ones check."""
    if any(item.get_closest_marker("long_work") for item in request.session.items):
        request.getfixturevalue("slow_world")
