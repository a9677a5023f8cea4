"""Fixtures: real servers over real databases (SQLite and PostgreSQL), called through real
channels. Every test that uses a server runs once per backend."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.databases import BACKENDS, POSTGRES_ENV, Databases
from tests.servers import ServerProcess

_names = itertools.count()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    found = Databases()
    if found.required and found.unavailable_reason:
        pytest.exit(f"{POSTGRES_ENV} is set but {found.unavailable_reason}", returncode=1)
    yield found
    found.drop_all()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, databases: Databases) -> str:
    name: str = request.param
    if name == "postgresql" and databases.unavailable_reason:
        pytest.skip(f"{databases.unavailable_reason} (set {POSTGRES_ENV} to require it)")
    return name


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("module")


@pytest.fixture
def new_database_url(backend: str, databases: Databases, tmp_path: Path) -> Callable[[], str]:
    """Makes an empty database of the test's backend and returns its URL."""
    return lambda: databases.new_url(backend, tmp_path)


@pytest.fixture(scope="module")
def server(backend: str, databases: Databases, module_dir: Path) -> Iterator[ServerProcess]:
    """A server shared by the tests of one module (they use distinct task ids and types)."""
    process = ServerProcess(databases.new_url(backend, module_dir), module_dir).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Any:
    return server.stub()


@pytest.fixture
def start_server(
    new_database_url: Callable[[], str], tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers of the test's own, each on a new database unless told otherwise."""
    started: list[ServerProcess] = []

    def start(*args: str, database_url: str | None = None, **env: str) -> ServerProcess:
        process = ServerProcess(database_url or new_database_url(), tmp_path, *args, **env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    # Whatever a test did to them, servers must still stop when told to.
    hung = [process for process in started if process.hung]
    assert not hung, f"a server did not stop within 30 s of SIGTERM:\n{hung[0].log()[-8000:]}"


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test in the module uses: unique('job') -> 'job-17'."""
    return lambda prefix: f"{prefix}-{next(_names)}"
