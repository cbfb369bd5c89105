"""Logs for every service, on stderr (so uvicorn and the consumer interleave), in two formats:

- `text` (the default): one readable line per record;
- `json`: one JSON object per line with `timestamp` (UTC, ISO 8601, ms), `level`, `logger`,
  `message`, and where known the context of the work in hand: `event_id`, `blog_id`, `group`,
  `partition`, `offset`, `trace_id` (plus `span_id`, `exception`). The consumer loop sets them
  per batch and record, the publisher per request (`log_context`, `bind_log_fields`: context
  variables, so each asyncio task sees its own); `trace_id` is, in order, the one set there (a
  record's own, from its `traceparent` header), else the current span's when tracing is on.

The format comes from the service's `<PREFIX>LOG_FORMAT` setting when set, else the shared
`LOG_FORMAT` variable (so `LOG_FORMAT=json` switches every service at once), else `text`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-5s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
FORMATS = ("text", "json")
LOG_FORMAT_ENV = "LOG_FORMAT"

# Chatty at INFO without telling an operator anything actionable.
_QUIET_LOGGERS = ("aiokafka", "kafka", "elastic_transport", "httpx")

# The fields of the work in hand; a new mapping on every change (never mutated in place), so a
# task's copy of the context keeps what it saw.
_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "service_kit_log_fields", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every record logged inside the block (None values are left out)."""
    token = _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _fields.reset(token)


def bind_log_fields(**fields: Any) -> None:
    """Add `fields` for the rest of the current task (e.g. a request once its blog is known)."""
    _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v is not None}})


def current_log_fields() -> Mapping[str, Any]:
    return _fields.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's doc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = _fields.get()
        for key, value in fields.items():
            entry[key] = value if isinstance(value, int | float | bool) else str(value)
        if "trace_id" not in entry:
            entry.update(_current_span_ids())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc_iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def _current_span_ids() -> dict[str, str]:
    # Imported here: logging must work (and stay cheap) without tracing configured.
    from service_kit import tracing

    return tracing.current_span_ids()


def resolve_format(configured: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The service's own setting, else the shared LOG_FORMAT, else text; an unknown value is an
    error (the process stops at start, naming it)."""
    chosen = (
        configured or (os.environ if environ is None else environ).get(LOG_FORMAT_ENV) or "text"
    )
    chosen = chosen.strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"unknown log format {chosen!r} (LOG_FORMAT): use one of {FORMATS}")
    return chosen


def configure_logging(level: str = "INFO", log_format: str | None = None) -> None:
    """Replace the root handlers with one stderr handler in the chosen format; idempotent."""
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    if resolve_format(log_format) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))
    # uvicorn installs its own handlers; let its records flow through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
