"""One error shape across the services: each app answers an unknown route and an invalid request
with an RFC 9457 problem, and its OpenAPI document says so (no server needed: the checks fail
before any dependency is used)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from counter.app import create_app as counter_app
from counter.settings import Settings as CounterSettings
from indexer.app import create_app as indexer_app
from indexer.settings import IndexerSettings
from lagmon.app import create_app as lagmon_app
from lagmon.settings import Settings as LagmonSettings
from publisher.app import create_app as publisher_app
from publisher.settings import PublisherSettings
from service_kit.problems import PROBLEM_JSON

APPS: dict[str, tuple[Callable[[], FastAPI], str]] = {
    "publisher": (
        lambda: publisher_app(PublisherSettings(database_url="postgresql://u@127.0.0.1:9/d")),
        "/blogs/not-a-uuid",
    ),
    "counter": (
        lambda: counter_app(CounterSettings(database_url="postgresql://u@127.0.0.1:9/d")),
        "/authors/not-a-uuid/stats",
    ),
    "indexer": (
        lambda: indexer_app(IndexerSettings(es_url="http://127.0.0.1:9")),
        "/search?size=0",
    ),
    "lagmon": (lambda: lagmon_app(LagmonSettings()), "/api/history?minutes=0"),
}


@pytest.mark.parametrize("service", sorted(APPS))
async def test_errors_are_problems(service: str) -> None:
    build, invalid = APPS[service]
    app = build()
    # Not started: validation fails before any route would use the runtime.
    app.state.runtime = object()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        unknown = await client.get("/no/such/route")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == PROBLEM_JSON
        assert unknown.json()["title"] == "Not Found"
        bad = await client.get(invalid)
        assert bad.status_code == 422, bad.text
        assert bad.headers["content-type"] == PROBLEM_JSON
        body = bad.json()
        assert body["status"] == 422
        assert body["instance"] == invalid.split("?")[0]
        assert body["errors"]
        assert all(error["field"] and error["message"] for error in body["errors"])

    document = app.openapi()
    assert "Problem" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")) and "content" in response:
                    assert set(response["content"]) == {PROBLEM_JSON}, (path, method, code)
