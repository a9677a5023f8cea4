"""OpenTelemetry traces (--otel): a span per RPC, and the SQL statements the call ran beneath
it, whichever thread ran them (the event loop, a read thread, the writer), on both backends.
The server runs in this process so that the in-memory exporter sees its spans; it is the real
server, on a real database, called over a real channel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resinkit_grpc.config import Settings
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc
from resinkit_grpc.server import Server
from tests.servers import run_cli

METHOD = "/resinkit.v1.TaskService/"


@pytest.fixture(scope="session")
def exporter() -> InMemorySpanExporter:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    return spans


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_each_rpc_is_a_span_with_its_statements_beneath_it(
    new_database_url: Callable[[], str], exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    settings = Settings(database_url=new_database_url(), address="127.0.0.1:0", otel=True)

    async def scenario() -> str:
        server = Server(settings)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.TaskServiceStub(channel)
                made = await stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="t")))
                await stub.GetTask(pb.GetTaskRequest(task_id=made.task_id))
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.GetTask(pb.GetTaskRequest(task_id="missing"))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
                await stub.ListTasks(pb.ListTasksRequest())
        finally:
            await server.stop()
        return made.task_id

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    rpcs = [s for s in spans if s.name.startswith(METHOD)]
    assert [s.name.removeprefix(METHOD) for s in rpcs] == [
        "CreateTask",
        "GetTask",
        "GetTask",
        "ListTasks",
    ]
    assert all(s.kind == trace.SpanKind.SERVER for s in rpcs)
    for rpc in rpcs:
        statements = [s for s in children(spans, rpc) if "db.statement" in (s.attributes or {})]
        assert statements, f"{rpc.name} has no statement beneath it"
        assert all(s.kind == trace.SpanKind.CLIENT for s in statements)
    # The task's row and its event: two statements, or one on PostgreSQL (see with_event).
    create = " ".join(
        str((s.attributes or {}).get("db.statement")) for s in children(spans, rpcs[0])
    )
    assert "INSERT INTO tasks " in create and "INSERT INTO task_events " in create, create
    codes = [(s.attributes or {}).get("rpc.grpc.status_code") for s in rpcs]
    assert codes == [0, 0, grpc.StatusCode.NOT_FOUND.value[0], 0]


def test_otel_without_the_extra_is_one_line(tmp_path: object) -> None:
    """The extra's absence is simulated by hiding its package from the server process."""
    hide = tmp_path / "hide"  # type: ignore[operator]
    (hide / "opentelemetry").mkdir(parents=True)
    (hide / "opentelemetry" / "__init__.py").write_text("raise ImportError('hidden')\n")
    database = tmp_path / "x.db"  # type: ignore[operator]
    result = run_cli(
        "serve", "--otel", "--database-url", f"sqlite:///{database}", PYTHONPATH=str(hide)
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "resinkit-grpc: error: --otel needs the otel extra: pip install 'resinkit-grpc[otel]'"
    )
    assert not database.exists()  # refused before anything was touched
