"""events.read_log on a real database: the watch's pages are cut by count and by stored bytes
in SQL, always a prefix of the matching log, and say whether they reached the range's end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from resinkit_grpc.config import Settings
from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store import events, migrations, tasks
from resinkit_grpc.store.database import Database


def test_pages_are_cut_by_stored_bytes_and_are_prefixes_of_the_log(
    new_database_url: Callable[[], str],
) -> None:
    database = Database(Settings(database_url=new_database_url()))
    migrations.migrate(database.writer_engine)
    sizes = [0, 3000, 10, 5000, 0, 20_000, 7]

    async def write() -> None:
        for n, size in enumerate(sizes):
            await database.write(
                tasks.create_task,
                tasks.NewTask(task_id=f"log-{n}", task_type="log", created_by="t"),
            )
            if size:
                await database.write(
                    tasks.update_task_status,
                    tasks.StatusChange(
                        task_id=f"log-{n}",
                        status=TaskStatus.RUNNING,
                        details={"execution_details": {"x": "y" * size}},
                    ),
                )

    try:
        asyncio.run(write())
        everything = database.run_read(
            events.read_log, after_event_id=0, limit=1000, max_bytes=10**9
        )
        assert everything.complete
        ids = [row["event_id"] for row in everything.rows]
        assert ids == sorted(ids) and len(ids) == len(sizes) + sum(1 for s in sizes if s)
        stored = {row["event_id"]: row["stored_size"] for row in everything.rows}
        assert sorted(stored.values())[-1] > 20_000  # the JSON text of the largest details
        for budget in (1, 100, 3100, 8000, 30_000):
            for after in (0, ids[2], ids[5]):
                page = database.run_read(
                    events.read_log, after_event_id=after, limit=1000, max_bytes=budget
                )
                got = [row["event_id"] for row in page.rows]
                rest = [event_id for event_id in ids if event_id > after]
                # An event comes when what comes before it is under the budget: the longest
                # prefix that fits, and always at least one event.
                fits, before = 0, 0
                for event_id in rest:
                    if before >= budget:
                        break
                    fits, before = fits + 1, before + stored[event_id]
                assert got == rest[:fits], (budget, after)
                assert page.complete == (fits == len(rest))
        by_count = database.run_read(events.read_log, after_event_id=0, limit=3, max_bytes=10**9)
        assert [row["event_id"] for row in by_count.rows] == ids[:3] and not by_count.complete
    finally:
        database.close()
