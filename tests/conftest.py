"""Fixtures: real servers over real databases, called through real channels."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerProcess

_names = itertools.count()


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("module")


@pytest.fixture(scope="module")
def server(module_dir: Path) -> Iterator[ServerProcess]:
    """A server shared by the tests of one module (they use distinct task ids and types)."""
    process = ServerProcess(f"sqlite:///{module_dir / 'tasks.db'}", module_dir).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Any:
    return server.stub()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers of the test's own (on its own SQLite file unless told otherwise)."""
    started: list[ServerProcess] = []

    def start(*args: str, database_url: str | None = None, **env: str) -> ServerProcess:
        url = database_url or f"sqlite:///{tmp_path / 'tasks.db'}"
        process = ServerProcess(url, tmp_path, *args, **env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test in the module uses: unique('job') -> 'job-17'."""
    return lambda prefix: f"{prefix}-{next(_names)}"
