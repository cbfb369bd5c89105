"""JSON logs: one object per line, the context of the work in hand (log_context, bind_log_fields,
the current span's trace id), and the format chosen by setting or LOG_FORMAT."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service_kit import tracing
from service_kit.logs import JsonFormatter, bind_log_fields, log_context, resolve_format


def json_logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.json.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_one_object_per_line_with_the_context_fields() -> None:
    logger, out = json_logger()
    event_id, blog_id = uuid.uuid4(), uuid.uuid4()
    logger.info("plain %s", "line")
    with log_context(group="counter", partition=3, offset=42, event_id=event_id, blog_id=blog_id):
        with log_context(trace_id="0af7651916cd43dd8448eb211c80319c", missing=None):
            logger.warning("multi\nline")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.info("after")
    first, inner, failed, after = lines(out)
    assert set(first) == {"timestamp", "level", "logger", "message"}
    assert first["message"] == "plain line"
    assert str(first["timestamp"]).endswith("Z")
    assert first["level"] == "INFO"
    assert inner["message"] == "multi\nline"
    assert {k: inner[k] for k in ("group", "partition", "offset", "event_id", "blog_id")} == {
        "group": "counter",
        "partition": 3,
        "offset": 42,
        "event_id": str(event_id),
        "blog_id": str(blog_id),
    }
    assert inner["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "missing" not in inner
    assert "trace_id" not in failed
    assert "ValueError: boom" in str(failed["exception"])
    assert "group" not in after


async def test_bound_fields_stay_in_their_task() -> None:
    logger, out = json_logger()

    async def request(n: int) -> None:
        bind_log_fields(blog_id=f"blog-{n}")
        await asyncio.sleep(0)
        logger.info("answered %d", n)

    await asyncio.gather(asyncio.create_task(request(1)), asyncio.create_task(request(2)))
    logger.info("outside")
    by_message = {line["message"]: line.get("blog_id") for line in lines(out)}
    assert by_message == {"answered 1": "blog-1", "answered 2": "blog-2", "outside": None}


def test_the_current_span_gives_the_trace_id() -> None:
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("test", exporter=exporter, set_global=False)
    try:
        logger, out = json_logger()
        assert tracing._active is not None
        with tracing._active.tracer.start_as_current_span("work") as span:
            logger.info("inside")
        (line,) = lines(out)
        assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
        assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    finally:
        tracing.shutdown_tracing()


def test_the_format_comes_from_the_setting_then_log_format() -> None:
    assert resolve_format(None, {}) == "text"
    assert resolve_format(None, {"LOG_FORMAT": "JSON"}) == "json"
    assert resolve_format("text", {"LOG_FORMAT": "json"}) == "text"
    with pytest.raises(ValueError, match="unknown log format 'yaml'"):
        resolve_format(None, {"LOG_FORMAT": "yaml"})


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert tracing.requested_exporters({}) == []
    assert tracing.requested_exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert tracing.requested_exporters({"OTEL_TRACES_EXPORTER": "otlp,console"}) == [
        "otlp",
        "console",
    ]
    disabled = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert tracing.requested_exporters(disabled) == []
    with pytest.raises(ValueError, match="unknown exporter"):
        tracing.requested_exporters({"OTEL_TRACES_EXPORTER": "jaeger"})
    assert not tracing.configure_tracing("test", environ={})
    assert not tracing.enabled()
    assert tracing.current_traceparent() is None
    assert tracing.trace_id_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") == (
        "0af7651916cd43dd8448eb211c80319c"
    )
    assert tracing.trace_id_of("garbage") is None
