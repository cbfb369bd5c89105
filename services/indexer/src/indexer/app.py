"""The composition root: `create_app(settings)` wires Elasticsearch, the consumer and the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError
from elasticsearch.serializer import NdjsonSerializer, OrjsonSerializer
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from blog_events import EventDecodeError
from blog_events.fast import FastEnvelope, decode_event_fast
from indexer.handler import IS_TRANSIENT, make_batch_handler
from indexer.index import ensure_index
from indexer.search import (
    MAX_PAGE_SIZE,
    MAX_RESULT_WINDOW,
    BlogDocument,
    SearchResponse,
    search_body,
    search_response,
)
from indexer.settings import IndexerSettings
from service_kit import tracing
from service_kit.background import BackgroundConsumer, consuming, install_liveness
from service_kit.consumer import BatchHandler, ConsumerMetrics, Decoder
from service_kit.problems import (
    ProblemError,
    field_errors,
    install_problem_handlers,
    problem_response,
    problem_responses,
    problem_type,
)

log = logging.getLogger(__name__)


def event_log_fields(envelope: FastEnvelope) -> dict[str, object]:
    """What a log line about one event says of it (JSON logs)."""
    return {"event_id": envelope.event_id, "blog_id": envelope.key}


# The blog contract's decoder: what it rejects is dead-lettered with its message as the reason.
# The fast one (msgspec, pydantic's verdicts: blog_events.fast): decoding was ~40 % of the
# indexer's CPU (docs/performance.md).
EVENT_DECODER = Decoder(decode_event_fast, (EventDecodeError,), log_fields=event_log_fields)

# Elasticsearch may still be starting when the service does (compose, a fresh stack).
ES_STARTUP_TIMEOUT_S = 60.0


class OrjsonNdjsonSerializer(NdjsonSerializer):
    """The bulk body (ndjson) written with orjson too: stdlib json was ~10 % of the drain."""

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default)

    def json_loads(self, data: bytes) -> Any:
        return orjson.loads(data)


def elasticsearch_client(url: str) -> AsyncElasticsearch:
    # orjson for requests and responses: parsing the bulk response with stdlib json was ~12 %.
    return AsyncElasticsearch(
        url,
        request_timeout=30,
        serializers={
            "application/json": OrjsonSerializer(),
            "application/x-ndjson": OrjsonNdjsonSerializer(),
        },
    )


@dataclass
class Runtime:
    es: AsyncElasticsearch
    consumer: BackgroundConsumer[FastEnvelope] | None = (
        None  # None: consumption disabled, search only
    )

    @property
    def consumer_healthy(self) -> bool:
        return self.consumer is None or self.consumer.healthy


async def _ensure_index_when_reachable(es: AsyncElasticsearch, settings: IndexerSettings) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ES_STARTUP_TIMEOUT_S
    delay = 0.5
    while True:
        try:
            await ensure_index(es, settings.index_alias, settings.index_name)
            return
        except TransportError as exc:  # connection refused / timeout: not up yet
            if loop.time() + delay > deadline:
                raise
            log.warning("Elasticsearch not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def create_app(
    settings: IndexerSettings,
    *,
    wrap_handler: Callable[[BatchHandler[FastEnvelope]], BatchHandler[FastEnvelope]] | None = None,
) -> FastAPI:
    """`wrap_handler` is a seam for tests (fault injection around the batch handler)."""
    consumer_metrics = ConsumerMetrics() if settings.consumer_enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(es=elasticsearch_client(settings.es_url))
        app.state.runtime = runtime
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(runtime.es.close)
            if settings.migrate_on_start:
                await _ensure_index_when_reachable(runtime.es, settings)
            if consumer_metrics is not None:
                handler = make_batch_handler(runtime.es, settings.index_alias)
                if wrap_handler is not None:
                    handler = wrap_handler(handler)
                runtime.consumer = await stack.enter_async_context(
                    consuming(
                        settings.consumer_config(),
                        handler,
                        consumer_metrics,
                        decoder=EVENT_DECODER,
                        is_transient=IS_TRANSIENT,
                    )
                )
            yield

    app = FastAPI(title="indexer", version="0.1.0", lifespan=lifespan)
    tracing.instrument_app(app)  # a no-op unless tracing is on (OTEL_TRACES_EXPORTER)

    def runtime_of(request: Request) -> Runtime:
        runtime: Runtime = request.app.state.runtime
        return runtime

    async def search_backend_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("Elasticsearch request failed: %s", exc)
        return problem_response(
            request, 503, "search backend unavailable", headers={"Retry-After": "5"}
        )

    install_problem_handlers(
        app,
        extra={TransportError: search_backend_unavailable, ApiError: search_backend_unavailable},
    )

    def consumer_of(request: Request) -> BackgroundConsumer[FastEnvelope] | None:
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        return runtime.consumer if runtime is not None else None

    install_liveness(app, consumer_of)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        runtime = runtime_of(request)
        try:
            health = await runtime.es.options(request_timeout=2).cluster.health()
            es_status = str(health.body.get("status", "unknown"))
        except (TransportError, ApiError) as exc:
            es_status = f"unreachable: {type(exc).__name__}"
        checks = {
            "elasticsearch": es_status,
            "consumer": (
                "disabled" if runtime.consumer is None else (runtime.consumer.problem or "ok")
            ),
        }
        ready = es_status in ("green", "yellow") and runtime.consumer_healthy
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/search",
        responses=problem_responses(
            422, 503, descriptions={422: "Invalid query", 503: "Search unavailable"}
        ),
    )
    async def search(
        request: Request,
        q: Annotated[str | None, Query(max_length=500)] = None,
        author: Annotated[str | None, Query(max_length=64)] = None,
        tag: Annotated[str | None, Query(max_length=64)] = None,
        page: Annotated[int, Query(ge=1)] = 1,
        size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 10,
    ) -> SearchResponse:
        if page * size > MAX_RESULT_WINDOW:
            message = f"page * size must not exceed {MAX_RESULT_WINDOW}; narrow the query"
            raise ProblemError(
                422,
                message,
                title="Invalid request",
                type=problem_type("validation"),
                errors=field_errors(
                    [
                        {"loc": ("query", name), "msg": message, "type": "value_error"}
                        for name in ("page", "size")
                    ]
                ),
            )
        body = search_body(q=q, author=author, tag=tag, page=page, size=size)
        raw = await runtime_of(request).es.search(index=settings.index_alias, **body)
        return search_response(raw.body, page=page, size=size)

    @app.get(
        "/blogs/{blog_id}",
        responses=problem_responses(
            404, 503, descriptions={404: "Unknown or deleted blog", 503: "Search unavailable"}
        ),
    )
    async def get_blog(request: Request, blog_id: str) -> BlogDocument:
        try:
            found = await runtime_of(request).es.get(index=settings.index_alias, id=blog_id)
        except NotFoundError:
            raise ProblemError(404, "blog not found") from None
        source: dict[str, Any] = found.body["_source"]
        if source.get("deleted"):
            raise ProblemError(404, "blog not found")
        return BlogDocument.model_validate(source)

    return app
