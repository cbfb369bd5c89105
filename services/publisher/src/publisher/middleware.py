"""Pure ASGI middleware: request body limit, UTF-8 check of JSON bodies and request metrics."""

from __future__ import annotations

import email.message
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from publisher.metrics import PublisherMetrics
from service_kit.problems import PROBLEM_JSON, field_errors, problem_json, problem_type


class BodyTooLargeError(Exception):
    pass


class BodySizeLimitMiddleware:
    """Answer 413 to request bodies over `max_bytes` before anything parses them: at once from a
    Content-Length header, or while counting the streamed chunks (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, send)
            return
        # Buffer the (bounded) body up front, so the limit holds whatever the app does later.
        chunks: list[bytes] = []
        size = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":
                # Client went away: let the app see the disconnect.
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, send)
                return
            chunks.append(chunk)
            more_body = message.get("more_body", False)
        body = b"".join(chunks)
        await self.app(
            scope,
            _replay([{"type": "http.request", "body": body, "more_body": False}], receive),
            send,
        )

    async def _reject(self, scope: Scope, send: Send) -> None:
        body = problem_json(
            413, f"request body larger than {self.max_bytes} bytes", instance=scope.get("path")
        )
        await _send_problem(send, body, 413, close=True)


class JsonUtf8Middleware:
    """Answer 422 to a JSON body that is not valid UTF-8 (RFC 8259 requires UTF-8), in the same
    shape as the other 422s (a problem listing the field). FastAPI itself would answer a bare
    400 "error parsing the body". Runs inside BodySizeLimitMiddleware, so the body is already
    complete and bounded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_parsed_as_json(scope):
            await self.app(scope, receive, send)
            return
        message = await receive()
        body = message.get("body", b"") if message["type"] == "http.request" else b""
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors = field_errors(
                [
                    {
                        "type": "utf8_invalid",
                        "loc": ["body"],
                        "msg": "request body is not valid UTF-8 "
                        f"(invalid byte at position {exc.start})",
                    }
                ]
            )
            body = problem_json(
                422,
                "invalid request: body",
                title="Invalid request",
                type=problem_type("validation"),
                instance=scope.get("path"),
                errors=errors,
            )
            await _send_problem(send, body, 422)
            return
        await self.app(scope, _replay([message], receive), send)


def _is_parsed_as_json(scope: Scope) -> bool:
    """Whether FastAPI may decode this request's body as JSON: application/json,
    application/*+json (FastAPI's test), or no Content-Type at all (parsed as JSON unless
    FastAPI's strict content type is on; either way a non-UTF-8 body is refused)."""
    content_type = _header(scope, b"content-type")
    if content_type is None or content_type == b"application/json":  # the usual case, no parse
        return True
    parsed = email.message.Message()
    parsed["content-type"] = content_type.decode("latin-1")
    subtype = parsed.get_content_subtype()
    return parsed.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def _send_problem(send: Send, payload: bytes, status: int, *, close: bool = False) -> None:
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class RequestMetricsMiddleware:
    """Count and time requests by method, route template (not raw path: bounded label values)
    and status."""

    def __init__(self, app: ASGIApp, metrics: PublisherMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"]
            self.metrics.http_requests.labels(method, route_path, str(status)).inc()
            self.metrics.http_request_duration.labels(method, route_path).observe(
                time.perf_counter() - started
            )
