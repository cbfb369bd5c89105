"""OpenTelemetry tracing for every service, in one place: off by default, so it costs nothing
unless asked for, and configured by the standard `OTEL_*` variables.

- On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp` = OTLP over HTTP/protobuf, configured
  by `OTEL_EXPORTER_OTLP_*`; `console`; a comma-separated list) and `OTEL_SDK_DISABLED` is not
  `true`. Unset or `none`: off (OpenTelemetry's own default would be `otlp`; here a service never
  exports unless told to). Sampling: `OTEL_TRACES_SAMPLER` / `_ARG` (default parentbased
  always_on), the service name `OTEL_SERVICE_NAME` (default: the service's), resource attributes
  `OTEL_RESOURCE_ATTRIBUTES`, propagators `OTEL_PROPAGATORS` (default W3C tracecontext, baggage).
- When on: the FastAPI app (`instrument_app`: a server span per request, probes excluded), asyncpg
  (a span per statement) and aiokafka (`<topic> send` per record sent, with the W3C `traceparent`
  header injected; `<topic> receive` per record polled, child of the record's context) are
  instrumented, and the services add:
  * the publisher stores each write's `traceparent` with its outbox row and the relay sends the
    row in that context (`in_remote_context`): the send span is the request span's child, and the
    record's header carries the send span's context (with tracing off in the relay, the stored
    `traceparent` is put on the record as it is);
  * the batch consumer opens one `<topic> process` span per batch (`consumer_batch_span`), with a
    link to each record's context: one batch holds records of many traces, so links, not a parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, SpanKind

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
EXPORTERS = ("otlp", "console")
# Probes and scrapes are not worth a trace each.
EXCLUDED_URLS = "/healthz,/readyz,/metrics"
# A batch span links to at most this many records (OpenTelemetry's default link limit is 128).
MAX_BATCH_LINKS = 128


class _KafkaRecord(Protocol):
    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


@dataclass
class _Tracing:
    provider: TracerProvider
    tracer: trace.Tracer
    instrumentors: list[BaseInstrumentor]


_active: _Tracing | None = None


def requested_exporters(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for (empty: tracing off). An unknown name is an error:
    the service stops at start rather than run without the traces someone asked for."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",")]
    chosen = [name for name in names if name and name != "none"]
    unknown = [name for name in chosen if name not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter(s) {unknown}; use {EXPORTERS}")
    return chosen


def configure_tracing(
    service: str,
    *,
    environ: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> bool:
    """Turn tracing on when the environment asks for it (or when `exporter` is given: tests pass
    an in-memory one, exported synchronously). True when on. `set_global=False` keeps the global
    tracer provider untouched (tests, which cannot reset it): only what this module instruments
    is traced then."""
    global _active
    if _active is not None:
        return True
    names = requested_exporters(environ)
    if exporter is None and not names:
        return False
    env = os.environ if environ is None else environ
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    if set_global:
        trace.set_tracer_provider(provider)
    instrumentors = _instrument(provider)
    _active = _Tracing(provider, provider.get_tracer("service_kit"), instrumentors)
    log.info("tracing on (%s) for %s", ", ".join(names) or "in-process exporter", service)
    return True


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _instrument(provider: TracerProvider) -> list[BaseInstrumentor]:
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentors: list[BaseInstrumentor] = [
        AsyncPGInstrumentor(),  # type: ignore[no-untyped-call]
        AIOKafkaInstrumentor(),
    ]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    return instrumentors


def shutdown_tracing() -> None:
    """Export what is pending, undo the instrumentation, and turn tracing off."""
    global _active
    if _active is None:
        return
    active, _active = _active, None
    for instrumentor in active.instrumentors:
        instrumentor.uninstrument()
    active.provider.shutdown()


def enabled() -> bool:
    return _active is not None


def instrument_app(app: Any) -> None:
    """A server span per request of a FastAPI app (probes and /metrics excluded), when on."""
    if _active is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_active.provider, excluded_urls=EXCLUDED_URLS
    )


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span (None with tracing off or outside a span)."""
    if _active is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


def current_span_ids() -> dict[str, str]:
    """`trace_id` and `span_id` of the current span, for the logs ({} when none or off)."""
    if _active is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id in a W3C traceparent (`00-<trace id>-<span id>-<flags>`), for the logs; None
    if it is absent or malformed. Needs no tracing."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    return parts[1]


def header_traceparent(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """A Kafka record's `traceparent` header (the first one), decoded."""
    for key, value in headers or ():
        if key == TRACEPARENT and value:
            return bytes(value).decode("latin-1")
    return None


@contextlib.contextmanager
def in_remote_context(traceparent: str | None) -> Iterator[None]:
    """Run the block in the context a `traceparent` names (e.g. a write's, stored with its
    outbox row): spans opened inside are its children. A no-op when off or without one."""
    if _active is None or not traceparent:
        yield
        return
    from opentelemetry import context as otel_context

    token = otel_context.attach(propagate.extract({TRACEPARENT: traceparent}, context=Context()))
    try:
        yield
    finally:
        otel_context.detach(token)


def suppressed() -> contextlib.AbstractContextManager[None]:
    """No instrumentation spans inside (plumbing such as polls and scrapes); a no-op when off."""
    if _active is None:
        return contextlib.nullcontext()
    return suppress_instrumentation()


def consumer_batch_span(
    topic: str, group: str, records: Sequence[_KafkaRecord]
) -> contextlib.AbstractContextManager[Any]:
    """The span of one consumed batch (`<topic> process`), current while the batch is settled
    and committed, linked to each record's context (its `traceparent` header). A no-op when off."""
    if _active is None:
        return contextlib.nullcontext()
    links: list[Link] = []
    for record in records:
        if len(links) >= MAX_BATCH_LINKS:
            break
        traceparent = header_traceparent(record.headers)
        if traceparent is None:
            continue
        linked = trace.get_current_span(
            propagate.extract({TRACEPARENT: traceparent}, context=Context())
        ).get_span_context()
        if linked.is_valid:
            links.append(
                Link(
                    linked,
                    {
                        "messaging.destination.partition.id": str(record.partition),
                        "messaging.kafka.offset": record.offset,
                    },
                )
            )
    return _active.tracer.start_as_current_span(
        f"{topic} process",
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": group,
            "messaging.batch.message_count": len(records),
        },
    )
