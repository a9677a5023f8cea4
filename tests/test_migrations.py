"""Alembic: the history upgrades, downgrades and upgrades again; models and migrations agree;
the installed package migrates at boot; a database newer than the code is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from resinkit_grpc.store.migrations import alembic_config

ROOT = Path(__file__).resolve().parent.parent
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "RESINKIT_DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_to_base_and_upgrade_again(new_database_url: Callable[[], str]) -> None:
    url = new_database_url()
    assert alembic(url, "upgrade", "head").returncode == 0
    assert {"tasks", "task_events", "service_secrets"} <= tables(url)
    assert alembic(url, "downgrade", "base").returncode == 0
    assert tables(url) == {"alembic_version"}
    assert alembic(url, "upgrade", "head").returncode == 0
    assert {"tasks", "task_events", "service_secrets"} <= tables(url)


def test_each_migration_downgrades_one_step_and_upgrades_again(
    new_database_url: Callable[[], str],
) -> None:
    url = new_database_url()
    assert alembic(url, "upgrade", "head").returncode == 0
    revisions = [r.revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    for _ in revisions:
        step = alembic(url, "downgrade", "-1")
        assert step.returncode == 0, step.stderr
    assert tables(url) == {"alembic_version"}
    for _ in revisions:
        step = alembic(url, "upgrade", "+1")
        assert step.returncode == 0, step.stderr
    assert alembic(url, "check").returncode == 0


def test_models_and_migrations_do_not_drift(new_database_url: Callable[[], str]) -> None:
    url = new_database_url()
    assert alembic(url, "upgrade", "head").returncode == 0
    check = alembic(url, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


def test_check_notices_a_model_the_migrations_lack(new_database_url: Callable[[], str]) -> None:
    """`alembic check` really compares: a database missing an index fails it."""
    url = new_database_url()
    assert alembic(url, "upgrade", "head").returncode == 0
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_tasks_created_by"))
    engine.dispose()
    assert alembic(url, "check").returncode != 0


def test_an_installed_package_migrates_an_empty_database_at_boot(
    tmp_path: Path, new_database_url: Callable[[], str]
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import resinkit_grpc; print(resinkit_grpc.__file__)"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target)), "the test must run the installed copy"
    url = new_database_url()
    result = subprocess.run(
        [sys.executable, "-m", "resinkit_grpc", "migrate", "--database-url", url],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"database at revision {HEAD}" in result.stdout
    assert {"tasks", "task_events"} <= tables(url)


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_database_newer_than_the_code_is_refused_in_one_line(
    tmp_path: Path, command: str
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert alembic(url, "upgrade", "head").returncode == 0
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "resinkit_grpc",
            command,
            "--database-url",
            url,
            "--address",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "9999_future" in last and HEAD in last
    assert "Traceback" not in result.stderr


def test_the_name_statistics_target_comes_with_0008_and_goes_with_its_downgrade(
    new_database_url: Callable[[], str], backend: str
) -> None:
    """PostgreSQL plans name_contains from the statistics of lower(task_name): 0008 raises
    their target on the trigram index's expression, and its downgrade sets it back."""
    if backend != "postgresql":
        pytest.skip("SQLite keeps no statistics")
    url = new_database_url()

    def target() -> int:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                return int(
                    connection.execute(
                        text(
                            "SELECT coalesce(attstattarget, -1) FROM pg_attribute "
                            "WHERE attrelid = 'ix_tasks_task_name_trgm'::regclass AND attnum = 1"
                        )
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    assert alembic(url, "upgrade", "head").returncode == 0
    assert target() == 1000
    # And a new database is not ANALYZEd empty: the planner would take the table for empty
    # until autovacuum's next look, and check each event's foreign key by scanning every task
    # (found in a benchmark: a fresh database's writes at a third of their rate meanwhile).
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            analyzed = connection.execute(
                text("SELECT reltuples >= 0 FROM pg_class WHERE relname = 'tasks'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert not analyzed, "migrating an empty database ANALYZEd its empty tasks table"
    assert alembic(url, "downgrade", "0007").returncode == 0
    assert target() == -1
