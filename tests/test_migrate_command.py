"""`resinkit-grpc migrate upgrade|downgrade|current|history` and `serve --no-migrate`, for teams
that migrate in a deployment step: on both backends, against populated databases, through the
installed command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.store.events import events as events_table
from resinkit_grpc.store.migrations import alembic_config
from tests.rpc import create
from tests.servers import ServerProcess, run_cli
from tests.test_migrations import HEAD, tables

REVISIONS = [
    rev.revision
    for rev in reversed(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))
]


def migrate(url: str, *args: str) -> tuple[int, str, str]:
    result = run_cli("migrate", *args, "--database-url", url)
    return result.returncode, result.stdout.strip(), result.stderr.strip()


def schema_objects(url: str) -> set[str]:
    """Every table and index: a revision may make indexes only (0006 on PostgreSQL)."""
    engine = create_engine(url)
    try:
        found = inspect(engine)
        names = set(found.get_table_names())
        return names | {str(index["name"]) for table in names for index in found.get_indexes(table)}
    finally:
        engine.dispose()


def revision_of(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SELECT version_num FROM alembic_version")).scalar())
    finally:
        engine.dispose()


def counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            tasks = connection.execute(text("SELECT count(*) FROM tasks")).scalar_one()
            events = connection.execute(select(func.count()).select_from(events_table)).scalar_one()
            return int(tasks), int(events)
    finally:
        engine.dispose()


def test_history_lists_every_revision_oldest_first_marking_the_head(
    new_database_url: Callable[[], str],
) -> None:
    code, out, _ = migrate(new_database_url(), "history")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == REVISIONS
    assert lines[-1].startswith(f"{HEAD} (head)  ")
    assert all("(head)" not in line for line in lines[:-1])


def test_a_populated_database_goes_down_and_up_keeping_its_tasks(
    new_database_url: Callable[[], str], tmp_path: Path
) -> None:
    url = new_database_url()
    server = ServerProcess(url, tmp_path).start()
    stub = server.stub()
    made = [create(stub, task_id=f"kept-{n}") for n in range(20)]
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=made[0].task_id, status=pb.TASK_STATUS_RUNNING)
    )
    assert server.stop() == 0
    before = counts(url)
    assert before == (20, 21)

    assert migrate(url, "current") == (0, f"database at revision {HEAD} (head)", "")
    # The newest revision below one that changes this backend's tables and indexes: 0008 sets
    # PostgreSQL statistics only, 0007 changes SQLite's only.
    previous = REVISIONS[-4] if url.startswith("postgresql") else REVISIONS[-3]
    at_head = schema_objects(url)
    code, out, err = migrate(url, "downgrade", previous)
    assert (code, out) == (0, f"database at revision {previous}"), err
    assert revision_of(url) == previous
    assert schema_objects(url) < at_head  # what the later revision made is gone
    assert migrate(url, "current") == (
        0,
        f"database at revision {previous} (behind head {HEAD})",
        "",
    )
    assert counts(url) == before

    code, out, err = migrate(url, "upgrade")
    assert (code, out) == (0, f"database at revision {HEAD}"), err
    assert counts(url) == before
    # And the server serves what was there, without migrating.
    server = ServerProcess(url, tmp_path, "--no-migrate").start()
    got = server.stub().GetTask(pb.GetTaskRequest(task_id=made[0].task_id))
    assert got.status == pb.TASK_STATUS_RUNNING
    assert server.stop() == 0


def test_serve_no_migrate_refuses_a_database_behind_in_one_line_and_changes_nothing(
    new_database_url: Callable[[], str],
) -> None:
    url = new_database_url()
    previous = REVISIONS[-2]
    assert migrate(url, "upgrade", previous)[0] == 0
    result = run_cli("serve", "--no-migrate", "--database-url", url, "--address", "127.0.0.1:0")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("resinkit-grpc: error: ")
    assert previous in lines[0] and HEAD in lines[0]
    assert "resinkit-grpc migrate upgrade" in lines[0]
    assert revision_of(url) == previous  # nothing migrated
    # The same goes for an empty database.
    empty = new_database_url()
    result = run_cli("serve", "--no-migrate", "--database-url", empty, "--address", "127.0.0.1:0")
    assert result.returncode == 1 and "migrate upgrade" in result.stderr
    assert "tasks" not in tables(empty)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("upgrade", "no-such-revision"), "cannot migrate to 'no-such-revision'"),
        (("downgrade", "no-such-revision"), "cannot migrate to 'no-such-revision'"),
    ],
)
def test_a_revision_it_cannot_go_to_is_one_line_and_changes_nothing(
    new_database_url: Callable[[], str], args: Any, said: str
) -> None:
    url = new_database_url()
    assert migrate(url, "upgrade", REVISIONS[0])[0] == 0
    code, out, err = migrate(url, *args)
    assert code == 1 and out == ""
    assert err.splitlines() == [err.splitlines()[-1]] and said in err, err
    assert revision_of(url) == REVISIONS[0]
    # Down to a revision the database is not above: refused too.
    code, _, err = migrate(url, "downgrade", HEAD)
    assert code == 1 and f"cannot migrate to '{HEAD}'" in err
    assert revision_of(url) == REVISIONS[0]


def test_upgrading_to_a_revision_below_the_current_one_changes_nothing(
    new_database_url: Callable[[], str],
) -> None:
    url = new_database_url()
    assert migrate(url, "upgrade")[0] == 0
    assert migrate(url, "upgrade", REVISIONS[0])[:2] == (0, f"database at revision {HEAD}")
    assert revision_of(url) == HEAD


def test_current_on_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here.db"
    code, out, _ = migrate(f"sqlite:///{path}", "current")
    assert code == 0
    assert out == f"no database at {path}: revision none (empty), head {HEAD}"
    assert not path.exists()


def test_migrate_without_a_step_still_upgrades_to_head(
    new_database_url: Callable[[], str],
) -> None:
    url = new_database_url()
    result = run_cli("migrate", "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"database at revision {HEAD}"
    assert revision_of(url) == HEAD


def test_a_missing_revision_argument_is_a_usage_error() -> None:
    result = run_cli("migrate", "downgrade")
    assert result.returncode == 2
    assert "REV" in result.stderr
