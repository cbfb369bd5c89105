"""service_kit.problems on a small app: every error is an RFC 9457 problem, documented so."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Query

from service_kit.problems import (
    PROBLEM_JSON,
    ProblemError,
    install_problem_handlers,
    problem_body,
    problem_responses,
)


def make_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/items/{item_id}", responses=problem_responses(404, 409))
    async def item(item_id: int, limit: Annotated[int, Query(ge=1)] = 1) -> dict[str, int]:
        if item_id == 404:
            raise HTTPException(404, "no such item", headers={"X-Why": "missing"})
        if item_id == 409:
            raise ProblemError(
                409, "it changed", type="urn:test:changed", title="Changed", current=7
            )
        if item_id == 500:
            raise RuntimeError("boom")
        return {"id": item_id}

    return app


@pytest.fixture
async def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_http_exceptions_are_problems(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/404")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["X-Why"] == "missing"
    assert response.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no such item",
        "instance": "/items/404",
    }
    unknown = await client.get("/nowhere")
    assert unknown.json() == {
        "type": "about:blank", "title": "Not Found", "status": 404, "instance": "/nowhere"
    }  # fmt: skip


async def test_problem_errors_carry_their_type_and_extensions(client: httpx.AsyncClient) -> None:
    body = (await client.get("/items/409")).json()
    assert body == {
        "type": "urn:test:changed",
        "title": "Changed",
        "status": 409,
        "detail": "it changed",
        "instance": "/items/409",
        "current": 7,
    }


async def test_validation_lists_every_invalid_field(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/x", params={"limit": "0"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["detail"] == "invalid request: path.item_id, query.limit"
    assert [(e["loc"], e["field"]) for e in body["errors"]] == [
        (["path", "item_id"], "path.item_id"),
        (["query", "limit"], "query.limit"),
    ]
    assert all(e["message"] and e["type"] for e in body["errors"])
    assert "input" not in str(body)


async def test_an_unexpected_error_is_a_500_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/500")
    assert response.status_code == 500
    assert response.json()["detail"] == "internal server error"
    assert response.headers["content-type"] == PROBLEM_JSON


def test_the_openapi_document_describes_problems() -> None:
    schema = make_app().openapi()
    responses = schema["paths"]["/items/{item_id}"]["get"]["responses"]
    for code in ("404", "409", "422"):
        assert responses[code]["content"] == {
            PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    components = schema["components"]["schemas"]
    assert {"Problem", "FieldError"} <= set(components)
    assert "HTTPValidationError" not in components
    assert components["Problem"]["properties"]["errors"]["anyOf"][0]["items"] == {
        "$ref": "#/components/schemas/FieldError"
    }


def test_problem_body_keeps_the_standard_members_first() -> None:
    body = problem_body(412, "stale", extensions={"status": 999, "current_version": 3})
    assert body == {
        "type": "about:blank",
        "title": "Precondition Failed",
        "status": 412,
        "detail": "stale",
        "current_version": 3,
    }
