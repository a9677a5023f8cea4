"""OpenTelemetry traces (`--otel`, the `otel` extra): a span per RPC from
opentelemetry-instrumentation-grpc's aio server interceptor, with the SQL statements it ran
beneath it from opentelemetry-instrumentation-sqlalchemy. The store carries each call's context
into its writer and read threads (store/database.py), so statements run there still land under
the call's span.

Configured by the standard variables: OTEL_SERVICE_NAME (default resinkit-grpc),
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_EXPORTER (`otlp`, the default, `console` or `none`),
OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_EXPORTER_OTLP_* of the OTLP exporter. A tracer
provider already installed in the process (by `opentelemetry-instrument`, say) is used as it is.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine

from resinkit_grpc.store.prepared import DRIVER_PATH

EXTRA_MISSING = "--otel needs the otel extra: pip install 'resinkit-grpc[otel]'"


class TracingUnavailable(RuntimeError):
    """--otel without the otel extra installed; the message is one line for the operator."""


def available() -> None:
    """TracingUnavailable unless the otel extra is installed."""
    try:
        import opentelemetry.instrumentation.grpc
        import opentelemetry.instrumentation.sqlalchemy
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise TracingUnavailable(EXTRA_MISSING) from exc


def start(engines: list[Engine]) -> Any:
    """Instruments the engines; returns the gRPC server interceptor to install."""
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise TracingUnavailable(EXTRA_MISSING) from exc
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(
            resource=Resource.create(
                {"service.name": os.environ.get("OTEL_SERVICE_NAME", "resinkit-grpc")}
            )
        )
        exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
        if exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif exporter != "none":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise TracingUnavailable(EXTRA_MISSING) from exc
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    # The instrumentation declares SQLAlchemy < 2.1 and would do nothing on 2.1; the engine
    # events it listens to are the same in 2.1 (tests/test_tracing.py runs on it).
    SQLAlchemyInstrumentor().instrument(
        engines=engines, tracer_provider=provider, skip_dep_check=True
    )
    # The hot statements' SQLite shortcut would bypass the engine events the tracing uses.
    DRIVER_PATH.on = False
    return aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]


def stop() -> None:
    """Sends what the provider still holds (spans of the last calls), and takes the statement
    tracing off the engines (a later server in this process instruments its own)."""
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return
    SQLAlchemyInstrumentor().uninstrument()
    DRIVER_PATH.on = True
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=5000)
