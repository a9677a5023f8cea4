"""ListTasks through a real server: filters, order, keyset pages, page tokens, soft delete, views.

The module's server is shared, so every test lists only what its own unique task types, tags or
creators select. Filters that cannot be isolated that way are checked on a server of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, new_task, rpc_error, violated_fields
from tests.servers import ServerProcess

Unique = Callable[[str], str]


def ids(tasks: Iterable[pb.Task]) -> list[str]:
    return [task.task_id for task in tasks]


def of_type(task_type: str, **fields: Any) -> pb.TaskFilter:
    return pb.TaskFilter(task_types=[task_type], **fields)


def listed(stub: Any, task_filter: pb.TaskFilter, **fields: Any) -> list[str]:
    """The ids of one page (big enough to hold every task a test creates)."""
    fields.setdefault("page_size", 1000)
    return ids(stub.ListTasks(pb.ListTasksRequest(filter=task_filter, **fields)).tasks)


def page_through(
    stub: Any,
    request: pb.ListTasksRequest,
    between_pages: Callable[[list[list[pb.Task]]], None] | None = None,
) -> list[list[pb.Task]]:
    """Every page of `request`, following next_page_token to the last page (the one without);
    `between_pages(pages so far)` runs before each following page is asked for."""
    pages: list[list[pb.Task]] = []
    while True:
        response = stub.ListTasks(request)
        pages.append(list(response.tasks))
        if not response.next_page_token:
            return pages
        assert len(pages) < 500, "paging does not end"
        if between_pages is not None:
            between_pages(pages)
        following = pb.ListTasksRequest()
        following.CopyFrom(request)
        following.page_token = response.next_page_token
        request = following


def flat(pages: Sequence[Sequence[pb.Task]]) -> list[str]:
    return [task.task_id for page in pages for task in page]


def set_status(stub: Any, task_id: str, status: int) -> pb.Task:
    return stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(task_id=task_id, status=status))


def create_concurrently(stub: Any, count: int, task_type: str) -> list[pb.Task]:
    futures = [
        stub.CreateTask.future(pb.CreateTaskRequest(task=new_task(task_type))) for _ in range(count)
    ]
    return [future.result() for future in futures]


def flip_character(text: str, index: int) -> str:
    replacement = "B" if text[index] == "A" else "A"
    return text[:index] + replacement + text[index + 1 :]


# Filters


def test_each_filter_field_alone_selects_exactly_the_matching_tasks(
    start_server: Callable[..., Any],
) -> None:
    stub = start_server().stub()
    t1 = create(
        stub,
        "sql",
        task_id="t1",
        created_by="alice",
        task_name="Orders Rollup",
        tags=["team-a", "nightly"],
    )
    t2 = create(
        stub, "cdc", task_id="t2", created_by="bob", task_name="inventory sync", tags=["team-b"]
    )
    t3 = create(
        stub,
        "sql",
        task_id="t3",
        created_by="bob",
        task_name="ROLLUP of users",
        tags=["team-a", "team-b"],
    )
    create(stub, "batch", task_id="t4", created_by="carol")
    set_status(stub, "t2", pb.TASK_STATUS_RUNNING)
    set_status(stub, "t3", pb.TASK_STATUS_FAILED)
    cases = {
        "no condition": pb.TaskFilter(),
        "statuses PENDING": pb.TaskFilter(statuses=[pb.TASK_STATUS_PENDING]),
        "statuses RUNNING or FAILED": pb.TaskFilter(
            statuses=[pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_FAILED]
        ),
        "task_types sql": pb.TaskFilter(task_types=["sql"]),
        "task_types sql or cdc": pb.TaskFilter(task_types=["sql", "cdc"]),
        "created_by bob": pb.TaskFilter(created_by="bob"),
        "name_contains rollup": pb.TaskFilter(name_contains="rollup"),
        "tags_any team-b or nightly": pb.TaskFilter(tags_any=["team-b", "nightly"]),
        "tags_all team-a and team-b": pb.TaskFilter(tags_all=["team-a", "team-b"]),
        "created_after t2": pb.TaskFilter(created_after=t2.created_at),
        "created_before t3": pb.TaskFilter(created_before=t3.created_at),
        "created_after t1, before t3": pb.TaskFilter(
            created_after=t1.created_at, created_before=t3.created_at
        ),
    }
    expected = {
        "no condition": ["t4", "t3", "t2", "t1"],
        "statuses PENDING": ["t4", "t1"],
        "statuses RUNNING or FAILED": ["t3", "t2"],
        "task_types sql": ["t3", "t1"],
        "task_types sql or cdc": ["t3", "t2", "t1"],
        "created_by bob": ["t3", "t2"],
        "name_contains rollup": ["t3", "t1"],
        "tags_any team-b or nightly": ["t3", "t2", "t1"],
        "tags_all team-a and team-b": ["t3"],
        "created_after t2": ["t4", "t3", "t2"],
        "created_before t3": ["t2", "t1"],
        "created_after t1, before t3": ["t2", "t1"],
    }
    actual = {name: listed(stub, task_filter) for name, task_filter in cases.items()}
    assert actual == expected


def test_filter_fields_combine_with_and_each_excluding_its_own_mismatch(
    stub: Any, unique: Unique
) -> None:
    task_type, other_type = unique("combined"), unique("combined-other")
    creator, other_creator = unique("creator"), unique("creator-other")
    tag_a, tag_b, tag_unused = unique("tag-a"), unique("tag-b"), unique("tag-unused")

    def make(name: str, **overrides: Any) -> str:
        fields: dict[str, Any] = {
            "created_by": creator,
            "task_name": "Nightly ROLLUP",
            "tags": [tag_a, tag_b],
        }
        fields.update(overrides)
        task = create(stub, fields.pop("task_type", task_type), task_id=unique(name), **fields)
        if name != "wrong-status":
            set_status(stub, task.task_id, pb.TASK_STATUS_RUNNING)
        return task.task_id

    early = make("too-early")
    target = make("target")
    mismatches = {
        "statuses": make("wrong-status"),
        "task_types": make("wrong-type", task_type=other_type),
        "created_by": make("wrong-creator", created_by=other_creator),
        "name_contains": make("wrong-name", task_name="Nightly export"),
        "tags_any": make("no-wanted-tag", tags=[tag_b]),
        "tags_all": make("missing-a-tag", tags=[tag_a]),
    }
    late = make("too-late")
    mismatches["created_after"] = early
    mismatches["created_before"] = late

    def created_at(task_id: str) -> Any:
        return stub.GetTask(pb.GetTaskRequest(task_id=task_id)).created_at

    conditions: dict[str, Any] = {
        "statuses": [pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_COMPLETED],
        "task_types": [task_type],
        "created_by": creator,
        "name_contains": "rollup",
        "tags_any": [tag_unused, tag_a],
        "tags_all": [tag_b],
        "created_after": created_at(target),
        "created_before": created_at(late),
    }
    assert listed(stub, pb.TaskFilter(**conditions)) == [target]
    for dropped, mismatch in mismatches.items():
        rest = {name: value for name, value in conditions.items() if name != dropped}
        assert set(listed(stub, pb.TaskFilter(**rest))) == {target, mismatch}, dropped


def test_tags_match_whole_tags_never_parts_of_them(stub: Any, unique: Unique) -> None:
    tag = unique("tag")
    exact = create(stub, unique("tags"), tags=[tag]).task_id
    longer = create(stub, unique("tags"), tags=[tag + "b"]).task_id
    quoted = create(stub, unique("tags"), tags=[f'"{tag}"', "other"]).task_id
    assert listed(stub, pb.TaskFilter(tags_any=[tag])) == [exact]
    assert listed(stub, pb.TaskFilter(tags_all=[tag])) == [exact]
    assert listed(stub, pb.TaskFilter(tags_any=[tag + "b"])) == [longer]
    assert listed(stub, pb.TaskFilter(tags_any=[f'"{tag}"'])) == [quoted]
    for part_or_pattern in (tag + "bc", tag[:-1], tag + "%", tag + "_", f'{tag}","other'):
        assert listed(stub, pb.TaskFilter(tags_any=[part_or_pattern])) == [], part_or_pattern
        assert listed(stub, pb.TaskFilter(tags_all=[part_or_pattern])) == [], part_or_pattern


def test_tags_any_needs_one_of_the_tags_and_tags_all_needs_every_one(
    stub: Any, unique: Unique
) -> None:
    task_type, red, blue, green = unique("tags"), unique("red"), unique("blue"), unique("green")
    only_red = create(stub, task_type, tags=[red]).task_id
    red_blue = create(stub, task_type, tags=[red, blue]).task_id
    blue_green = create(stub, task_type, tags=[green, blue]).task_id
    untagged = create(stub, task_type).task_id
    assert listed(stub, of_type(task_type, tags_any=[red, green])) == [
        blue_green,
        red_blue,
        only_red,
    ]
    assert listed(stub, of_type(task_type, tags_all=[red, blue])) == [red_blue]
    assert listed(stub, of_type(task_type, tags_all=[blue])) == [blue_green, red_blue]
    assert listed(stub, of_type(task_type, tags_all=[red, green])) == []
    assert listed(stub, of_type(task_type, tags_any=[red], tags_all=[blue])) == [red_blue]
    assert untagged in listed(stub, of_type(task_type))


def test_name_contains_ignores_case_and_takes_wildcards_literally(
    stub: Any, unique: Unique
) -> None:
    task_type = unique("names")
    rollup = create(stub, task_type, task_name="Orders ROLLUP daily").task_id
    percent = create(stub, task_type, task_name="100% done").task_id
    underscore = create(stub, task_type, task_name="load_users").task_id
    lookalike = create(stub, task_type, task_name="loadXusers").task_id
    slashes = create(stub, task_type, task_name="s3://bucket/path").task_id
    create(stub, task_type)  # no name at all
    assert listed(stub, of_type(task_type, name_contains="rollup")) == [rollup]
    assert listed(stub, of_type(task_type, name_contains="oRdErS rOlLuP")) == [rollup]
    assert listed(stub, of_type(task_type, name_contains="0% d")) == [percent]
    assert listed(stub, of_type(task_type, name_contains="%")) == [percent]
    assert listed(stub, of_type(task_type, name_contains="d_u")) == [underscore]
    assert listed(stub, of_type(task_type, name_contains="usErs")) == [lookalike, underscore]
    assert listed(stub, of_type(task_type, name_contains="://BUCKET/")) == [slashes]


def test_name_contains_ignores_case_beyond_ascii(stub: Any, unique: Unique) -> None:
    task_type = unique("unicode-names")
    named = create(stub, task_type, task_name="Résumé ÜBER-Rollup").task_id
    create(stub, task_type, task_name="resume uber rollup")
    assert listed(stub, of_type(task_type, name_contains="über")) == [named]
    assert listed(stub, of_type(task_type, name_contains="RÉSUMÉ")) == [named]


def test_created_after_is_inclusive_and_created_before_is_exclusive(
    stub: Any, unique: Unique
) -> None:
    task_type = unique("window")
    first, second, third = (create(stub, task_type) for _ in range(3))
    after_second = of_type(task_type, created_after=second.created_at)
    before_second = of_type(task_type, created_before=second.created_at)
    exactly_second = of_type(
        task_type, created_after=second.created_at, created_before=third.created_at
    )
    assert listed(stub, after_second) == [third.task_id, second.task_id]
    assert listed(stub, before_second) == [first.task_id]
    assert listed(stub, exactly_second) == [second.task_id]
    empty_window = of_type(
        task_type, created_after=second.created_at, created_before=second.created_at
    )
    assert listed(stub, empty_window) == []


def test_an_unspecified_status_in_the_filter_places_no_condition(stub: Any, unique: Unique) -> None:
    # The proto: TASK_STATUS_UNSPECIFIED "in filters and requests ... means 'no status given'".
    task_type = unique("unspecified")
    pending = create(stub, task_type).task_id
    running = create(stub, task_type).task_id
    set_status(stub, running, pb.TASK_STATUS_RUNNING)
    unspecified = of_type(task_type, statuses=[pb.TASK_STATUS_UNSPECIFIED])
    assert listed(stub, unspecified) == [running, pending]


@pytest.mark.parametrize(
    "stamp",
    [
        timestamp_pb2.Timestamp(seconds=253402300800),  # year 10000
        timestamp_pb2.Timestamp(seconds=1, nanos=-5),
    ],
)
@pytest.mark.parametrize("field", ["created_after", "created_before"])
def test_an_invalid_timestamp_in_the_filter_is_invalid_argument(
    stub: Any, field: str, stamp: timestamp_pb2.Timestamp
) -> None:
    request = pb.ListTasksRequest(filter=pb.TaskFilter(**{field: stamp}))
    error = rpc_error(lambda: stub.ListTasks(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {f"filter.{field}"}


def test_an_unknown_status_in_the_filter_is_invalid_argument(stub: Any) -> None:
    request = pb.ListTasksRequest(filter=pb.TaskFilter(statuses=[pb.TASK_STATUS_RUNNING, 99]))
    error = rpc_error(lambda: stub.ListTasks(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"filter.statuses"}


# Order


def test_tasks_are_listed_newest_first_by_default(stub: Any, unique: Unique) -> None:
    task_type = unique("newest")
    created = [create(stub, task_type).task_id for _ in range(5)]
    assert listed(stub, of_type(task_type)) == created[::-1]


@pytest.mark.parametrize(
    ("order_by", "field", "descending"),
    [
        # AIP-132: a field without a direction sorts ascending.
        ("created_at", "created_at", False),
        ("created_at asc", "created_at", False),
        ("created_at desc", "created_at", True),
        ("updated_at", "updated_at", False),
        ("updated_at asc", "updated_at", False),
        ("updated_at desc", "updated_at", True),
        ("priority", "priority", False),
        ("priority asc", "priority", False),
        ("priority desc", "priority", True),
    ],
)
def test_tasks_are_listed_in_the_requested_order_with_ties_broken_by_task_id(
    stub: Any, unique: Unique, order_by: str, field: str, descending: bool
) -> None:
    task_type = unique("order")
    # Ids, priorities and update times all disagree with creation order; priorities tie in
    # pairs and compare as numbers (10 > 5 > -2), not as text.
    for suffix, priority in [("c", 1), ("a", 5), ("e", 10), ("d", 1), ("b", 5), ("f", -2)]:
        create(stub, task_type, task_id=f"{task_type}-{suffix}", priority=priority)
    for suffix in ("d", "a", "f"):
        stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=pb.Task(task_id=f"{task_type}-{suffix}", task_name="touched"),
                update_mask=field_mask_pb2.FieldMask(paths=["task_name"]),
            )
        )
    stored = [
        stub.GetTask(pb.GetTaskRequest(task_id=task_id))
        for task_id in listed(stub, of_type(task_type))
    ]

    def sort_key(task: pb.Task) -> tuple[Any, str]:
        value = getattr(task, field)
        value = value if field == "priority" else (value.seconds, value.nanos)
        return value, task.task_id

    expected = ids(sorted(stored, key=sort_key, reverse=descending))
    request = pb.ListTasksRequest(filter=of_type(task_type), order_by=order_by, page_size=2)
    assert flat(page_through(stub, request)) == expected


def test_equal_priorities_are_ordered_by_task_id_in_the_same_direction_across_pages(
    stub: Any, unique: Unique
) -> None:
    task_type = unique("ties")
    for suffix in ("m", "b", "z", "a", "q"):
        create(stub, task_type, task_id=f"{task_type}-{suffix}", priority=7)

    def names(pages: list[list[pb.Task]]) -> list[str]:
        return [task_id.rsplit("-", 1)[1] for task_id in flat(pages)]

    ascending = pb.ListTasksRequest(filter=of_type(task_type), order_by="priority asc", page_size=2)
    descending = pb.ListTasksRequest(
        filter=of_type(task_type), order_by="priority desc", page_size=2
    )
    assert names(page_through(stub, ascending)) == ["a", "b", "m", "q", "z"]
    assert names(page_through(stub, descending)) == ["z", "q", "m", "b", "a"]


@pytest.mark.parametrize(
    "order_by",
    [
        "name",
        "task_id",
        "priority sideways",
        "priority asc desc",
        "created_at, priority",
        "priority desc, task_id",
        "PRIORITY",
        "-priority",
    ],
)
def test_a_malformed_order_by_is_invalid_argument_naming_order_by(stub: Any, order_by: str) -> None:
    request = pb.ListTasksRequest(order_by=order_by)
    error = rpc_error(lambda: stub.ListTasks(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"order_by"}


# Pages


@pytest.mark.parametrize("order_by", ["", "created_at asc"])
def test_paging_returns_every_task_exactly_once_in_order(
    stub: Any, unique: Unique, order_by: str
) -> None:
    task_type = unique("pages")
    created = [create(stub, task_type).task_id for _ in range(57)]
    expected = created if order_by == "created_at asc" else created[::-1]
    request = pb.ListTasksRequest(filter=of_type(task_type), order_by=order_by, page_size=10)
    pages = page_through(stub, request)
    assert [len(page) for page in pages] == [10, 10, 10, 10, 10, 7]
    assert flat(pages) == expected


def test_the_last_page_has_no_next_page_token(stub: Any, unique: Unique) -> None:
    task_type = unique("last-page")
    for _ in range(4):
        create(stub, task_type)
    first = stub.ListTasks(pb.ListTasksRequest(filter=of_type(task_type), page_size=2))
    assert len(first.tasks) == 2 and first.next_page_token
    second = stub.ListTasks(
        pb.ListTasksRequest(
            filter=of_type(task_type), page_size=2, page_token=first.next_page_token
        )
    )
    assert len(second.tasks) == 2
    assert second.next_page_token == ""
    exact = stub.ListTasks(pb.ListTasksRequest(filter=of_type(task_type), page_size=4))
    assert len(exact.tasks) == 4 and exact.next_page_token == ""
    nothing = stub.ListTasks(pb.ListTasksRequest(filter=of_type(unique("no-such-type"))))
    assert list(nothing.tasks) == [] and nothing.next_page_token == ""


def test_page_size_zero_means_fifty(stub: Any, unique: Unique) -> None:
    task_type = unique("default-size")
    for _ in range(51):
        create(stub, task_type)
    first = stub.ListTasks(pb.ListTasksRequest(filter=of_type(task_type), page_size=0))
    assert len(first.tasks) == 50 and first.next_page_token
    rest = stub.ListTasks(
        pb.ListTasksRequest(filter=of_type(task_type), page_token=first.next_page_token)
    )
    assert len(rest.tasks) == 1 and rest.next_page_token == ""


def test_a_page_size_above_1000_is_lowered_to_1000(stub: Any, unique: Unique) -> None:
    task_type = unique("big")
    created = {task.task_id for task in create_concurrently(stub, 1001, task_type)}
    request = pb.ListTasksRequest(filter=of_type(task_type), page_size=5000)
    pages = page_through(stub, request)
    assert [len(page) for page in pages] == [1000, 1]
    assert set(flat(pages)) == created


def test_a_page_size_above_1000_returns_everything_when_fewer_exist(
    stub: Any, unique: Unique
) -> None:
    task_type = unique("few")
    created = [create(stub, task_type).task_id for _ in range(3)]
    response = stub.ListTasks(pb.ListTasksRequest(filter=of_type(task_type), page_size=5000))
    assert ids(response.tasks) == created[::-1]
    assert response.next_page_token == ""


def test_a_negative_page_size_is_invalid_argument(stub: Any) -> None:
    error = rpc_error(
        lambda: stub.ListTasks(pb.ListTasksRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"page_size"}


# Page tokens


def test_a_page_token_is_only_valid_with_the_filter_and_order_it_was_issued_for(
    stub: Any, unique: Unique
) -> None:
    task_type = unique("token")
    for _ in range(3):
        create(stub, task_type, task_name="job", tags=["x"])
    issued = pb.ListTasksRequest(filter=of_type(task_type), order_by="priority desc", page_size=1)
    token = stub.ListTasks(issued).next_page_token
    assert token
    others = {
        "another type": pb.ListTasksRequest(filter=of_type(unique("token-other"))),
        "an added condition": pb.ListTasksRequest(filter=of_type(task_type, name_contains="job")),
        "an added tag filter": pb.ListTasksRequest(filter=of_type(task_type, tags_any=["x"])),
        "another order": pb.ListTasksRequest(filter=of_type(task_type), order_by="priority asc"),
        "another sort field": pb.ListTasksRequest(
            filter=of_type(task_type), order_by="updated_at desc"
        ),
        "the default order": pb.ListTasksRequest(filter=of_type(task_type)),
        "show_deleted": pb.ListTasksRequest(
            filter=of_type(task_type), order_by="priority desc", show_deleted=True
        ),
    }
    for name, request in others.items():
        request.page_token = token
        request.page_size = 1
        error = rpc_error(lambda r=request: stub.ListTasks(r), grpc.StatusCode.INVALID_ARGUMENT)
        assert violated_fields(error) == {"page_token"}, name


def test_a_page_token_may_be_used_with_another_page_size_or_view(stub: Any, unique: Unique) -> None:
    task_type = unique("token-size")
    created = [create(stub, task_type).task_id for _ in range(4)]
    first = stub.ListTasks(pb.ListTasksRequest(filter=of_type(task_type), page_size=1))
    rest = stub.ListTasks(
        pb.ListTasksRequest(
            filter=of_type(task_type),
            page_size=10,
            view=pb.TASK_VIEW_FULL,
            page_token=first.next_page_token,
        )
    )
    assert ids(first.tasks) + ids(rest.tasks) == created[::-1]


def test_tampered_and_garbage_page_tokens_are_invalid_argument(stub: Any, unique: Unique) -> None:
    task_type = unique("tamper")
    for _ in range(3):
        create(stub, task_type)
    request = pb.ListTasksRequest(filter=of_type(task_type), page_size=1)
    token = stub.ListTasks(request).next_page_token
    payload, dot, signature = token.partition(".")
    assert dot and payload and signature
    bad_tokens = [
        flip_character(token, 0),
        flip_character(token, len(payload) // 2),
        flip_character(token, len(payload) - 1),
        flip_character(token, len(payload) + 1),
        payload,
        payload + ".",
        "." + signature,
        token + "x",
        token[::-1],
        "garbage",
        "not.a.token",
        "!!!!.????",
        "ü.ß",
        "A" * 4000,
    ]
    for bad in bad_tokens:
        request.page_token = bad
        error = rpc_error(lambda: stub.ListTasks(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert violated_fields(error) == {"page_token"}, bad
        assert "Traceback" not in error.details()


# Keyset stability


def test_tasks_created_while_paging_oldest_first_neither_skip_nor_repeat_a_task(
    stub: Any, unique: Unique
) -> None:
    task_type = unique("stable-asc")
    existing = [create(stub, task_type).task_id for _ in range(20)]
    added: list[str] = []

    def create_two(pages: list[list[pb.Task]]) -> None:
        if len(pages) <= 5:
            added.extend(create(stub, task_type).task_id for _ in range(2))

    request = pb.ListTasksRequest(filter=of_type(task_type), order_by="created_at asc", page_size=3)
    seen = flat(page_through(stub, request, create_two))
    assert len(added) == 10
    assert seen == existing + added


def test_tasks_created_while_paging_newest_first_do_not_appear_on_later_pages(
    stub: Any, unique: Unique
) -> None:
    task_type = unique("stable-desc")
    existing = [create(stub, task_type).task_id for _ in range(20)]
    added: list[str] = []

    def create_two(pages: list[list[pb.Task]]) -> None:
        added.extend(create(stub, task_type).task_id for _ in range(2))

    request = pb.ListTasksRequest(filter=of_type(task_type), page_size=3)
    seen = flat(page_through(stub, request, create_two))
    assert added
    assert seen == existing[::-1]


def test_tasks_inserted_behind_and_ahead_of_the_cursor_neither_skip_nor_repeat_a_task(
    stub: Any, unique: Unique
) -> None:
    task_type = unique("stable-priority")
    existing = [
        create(stub, task_type, task_id=f"{task_type}-{n:02d}", priority=n) for n in range(20)
    ]
    behind: list[pb.Task] = []
    ahead: list[pb.Task] = []

    def insert_around_the_cursor(pages: list[list[pb.Task]]) -> None:
        cursor = pages[-1][-1].priority
        number = len(pages)
        behind.append(
            create(stub, task_type, task_id=f"{task_type}-b{number}", priority=cursor - 1)
        )
        ahead.append(create(stub, task_type, task_id=f"{task_type}-a{number}", priority=cursor + 2))

    request = pb.ListTasksRequest(filter=of_type(task_type), order_by="priority asc", page_size=3)
    seen = flat(page_through(stub, request, insert_around_the_cursor))
    expected = sorted(existing + ahead, key=lambda task: (task.priority, task.task_id))
    assert len(behind) >= 5
    assert seen == ids(expected)


# Soft delete and views


def test_deleted_tasks_are_hidden_unless_show_deleted_is_set(stub: Any, unique: Unique) -> None:
    task_type = unique("deleted")
    kept = create(stub, task_type).task_id
    deleted = create(stub, task_type).task_id
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=deleted))
    assert listed(stub, of_type(task_type)) == [kept]
    everything = stub.ListTasks(pb.ListTasksRequest(filter=of_type(task_type), show_deleted=True))
    assert [(task.task_id, task.active) for task in everything.tasks] == [
        (deleted, False),
        (kept, True),
    ]
    stub.UndeleteTask(pb.UndeleteTaskRequest(task_id=deleted))
    assert listed(stub, of_type(task_type)) == [deleted, kept]


def test_listing_returns_the_basic_view_unless_full_is_asked(stub: Any, unique: Unique) -> None:
    task_type = unique("view")
    task = new_task(task_type, tags=["v"], submitted_configs={"sql": "SELECT 1"})
    task.notification_config.update({"webhooks": [{"url": "https://ops.example/hook"}]})
    task.execution_details.update({"cluster": "c1"})
    task.progress_details.update({"percent": 10})
    created = stub.CreateTask(pb.CreateTaskRequest(task=task))
    large = [
        "submitted_configs",
        "notification_config",
        "execution_details",
        "progress_details",
    ]

    def listed_task(view: int) -> pb.Task:
        response = stub.ListTasks(pb.ListTasksRequest(filter=of_type(task_type), view=view))
        (only,) = response.tasks
        return only

    for view in (pb.TASK_VIEW_UNSPECIFIED, pb.TASK_VIEW_BASIC):
        basic = listed_task(view)
        assert [name for name in large if basic.HasField(name)] == [], view
        assert list(basic.tags) == ["v"] and basic.etag == created.etag
    assert listed_task(pb.TASK_VIEW_FULL) == created


def test_a_long_scan_moves_off_the_event_loop_and_still_answers_exactly(
    backend: str, start_server: Callable[..., ServerProcess]
) -> None:
    """On SQLite a read runs on the event loop only within a time budget; a scan through
    thousands of rows exceeds it, is interrupted, and finishes on a read thread."""
    server = start_server("--log-level", "DEBUG", "--loop-read-budget", "0.05")
    stub = server.stub()
    for start in range(0, 3000, 500):
        for i in range(start, start + 500):
            stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="scan", task_name=f"n{i}")))
    page = stub.ListTasks(
        pb.ListTasksRequest(filter=pb.TaskFilter(name_contains="no such name"), page_size=10)
    )
    assert list(page.tasks) == [] and page.next_page_token == ""
    named = stub.ListTasks(
        pb.ListTasksRequest(filter=pb.TaskFilter(name_contains="n2999"), page_size=10)
    )
    assert [task.task_name for task in named.tasks] == ["n2999"]
    if backend == "sqlite":
        assert "read list_tasks moved to a read thread" in server.log()


def test_paging_by_created_at_never_repeats_or_skips_while_every_row_changes(
    stub: Any, unique: Unique
) -> None:
    """The promise for the one immutable order: rows changed (priority, tags, status) between
    pages never move, so each comes exactly once."""
    task_type = unique("changing")
    made = [create(stub, task_type).task_id for _ in range(15)]

    def touch_every_row(pages: list[list[pb.Task]]) -> None:
        for n, task_id in enumerate(made):
            stub.UpdateTask(
                pb.UpdateTaskRequest(
                    task=pb.Task(task_id=task_id, priority=len(pages) * 10 + n, tags=["moved"])
                )
            )

    for order_by in ("created_at asc", "created_at desc"):
        request = pb.ListTasksRequest(filter=of_type(task_type), order_by=order_by, page_size=4)
        seen = flat(page_through(stub, request, touch_every_row))
        assert sorted(seen) == sorted(made) and len(seen) == len(made), order_by


def test_paging_by_a_mutable_order_moves_a_changed_row_as_documented(
    stub: Any, unique: Unique
) -> None:
    """Ordered by priority, a row whose priority rises past the position comes again: the
    documented limit of keyset pages over a mutable sort key."""
    task_type = unique("mutable-order")
    made = [create(stub, task_type, priority=n).task_id for n in range(6)]

    def raise_the_first(pages: list[list[pb.Task]]) -> None:
        if len(pages) == 1:
            first = pages[0][0].task_id
            stub.UpdateTask(pb.UpdateTaskRequest(task=pb.Task(task_id=first, priority=100)))

    request = pb.ListTasksRequest(filter=of_type(task_type), order_by="priority asc", page_size=3)
    seen = flat(page_through(stub, request, raise_the_first))
    assert seen == [*made, made[0]]
