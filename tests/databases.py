"""Databases for the tests: a new SQLite file, or a new PostgreSQL database, per server.

PostgreSQL is found through RESINKIT_TEST_POSTGRES_URL (a URL of a database we may connect to
in order to CREATE DATABASE), else at 127.0.0.1:5432 as user postgres. When the variable is set
and the server does not answer, the run fails; when it is unset, the PostgreSQL tests are
skipped with the reason. Every database a run creates is dropped when the run ends.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

POSTGRES_ENV = "RESINKIT_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgresql")


class Databases:
    def __init__(self) -> None:
        configured = os.environ.get(POSTGRES_ENV)
        self.required = bool(configured)
        self.admin_url = make_url(configured or DEFAULT_POSTGRES)
        self.created: list[str] = []
        self._names = itertools.count()
        self.unavailable_reason: str | None = None
        try:
            with self._admin() as connection:
                connection.execute("SELECT 1")
        except psycopg.Error as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            self.unavailable_reason = f"PostgreSQL at {self._where()} unreachable: {first_line}"

    def _where(self) -> str:
        return f"{self.admin_url.host}:{self.admin_url.port or 5432}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        url = self.admin_url.set(drivername="postgresql")
        return psycopg.connect(
            url.render_as_string(hide_password=False), autocommit=True, connect_timeout=3
        )

    def new_url(self, backend: str, directory: Path) -> str:
        if backend == "sqlite":
            return f"sqlite:///{directory / f'tasks-{next(self._names)}.db'}"
        name = f"resinkit_test_{os.getpid()}_{next(self._names)}"
        with self._admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self.created:
            return
        with self._admin() as connection:
            for name in self.created:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()
