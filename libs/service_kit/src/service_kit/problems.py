"""One error shape for every service: RFC 9457 problem details (`application/problem+json`).

    {"type": "about:blank", "title": "Not Found", "status": 404,
     "detail": "blog not found", "instance": "/blogs/0c6e..."}

A 422 lists the invalid fields in `errors` ({loc, field, message, type}); a problem may carry
extension members (e.g. `current_version` on a 412). `install_problem_handlers(app)` makes every
error of the app a problem (HTTPException, request validation, `ProblemError`, uncaught
exceptions) and documents them in its OpenAPI; `problem_responses(...)` documents a route's
error answers; `problem_json(...)` builds one outside FastAPI (ASGI middleware).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
ABOUT_BLANK = "about:blank"
# Problem types of this platform, as URNs: stable names to branch on, no document to fetch.
PROBLEM_TYPE_PREFIX = "urn:blog-platform:problem:"


def problem_type(name: str) -> str:
    return f"{PROBLEM_TYPE_PREFIX}{name}"


class FieldError(BaseModel):
    """One invalid part of a request."""

    loc: list[str | int] = Field(description='Where: e.g. ["body", "tags", 1]')
    field: str = Field(description="`loc` as one dotted name, e.g. `body.tags.1`")
    message: str
    type: str = Field(description="A machine-readable error code, e.g. `string_too_long`")


class Problem(BaseModel):
    """An RFC 9457 problem: what went wrong, for humans (`title`, `detail`) and programs (`type`,
    `status`, extension members)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default=ABOUT_BLANK, description="A URI naming the problem type")
    title: str = Field(description="Short summary of the problem type")
    status: int = Field(description="The HTTP status code")
    detail: str | None = Field(default=None, description="This occurrence, explained")
    instance: str | None = Field(default=None, description="The request path it happened on")
    errors: list[FieldError] | None = Field(
        default=None, description="The invalid fields (validation problems only)"
    )


class ProblemError(Exception):
    """Raise it from a route or dependency to answer with a problem."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        type: str = ABOUT_BLANK,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title or HTTPStatus(status).phrase)
        self.status = status
        self.detail = detail
        self.title = title
        self.type = type
        self.headers = dict(headers or {})
        self.extensions = extensions


def problem_body(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    type: str = ABOUT_BLANK,
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": type,
        # With about:blank the title is the status phrase (RFC 9457, 4.2.1).
        "title": title or _phrase(status),
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = [error.model_dump() for error in errors]
    for key, value in (extensions or {}).items():
        body.setdefault(key, jsonable_encoder(value))
    return body


def problem_json(status: int, detail: str | None = None, **members: Any) -> bytes:
    """The encoded body of a problem, for code that answers without FastAPI (ASGI middleware)."""
    return json.dumps(problem_body(status, detail, **members)).encode()


def problem_response(
    request: Request | None,
    status: int,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **members: Any,
) -> JSONResponse:
    instance = request.url.path if request is not None else None
    return JSONResponse(
        problem_body(status, detail, instance=instance, **members),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_JSON,
    )


def printable(part: object) -> object:
    """A location part as JSON can carry: an unknown field's name may be a lone surrogate."""
    if isinstance(part, str):
        return part.encode("utf-8", "backslashreplace").decode("utf-8")
    return part


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[FieldError]:
    """Pydantic/FastAPI validation errors as FieldErrors (the invalid `input` is never echoed:
    it can be the whole, large body, or text that is not even encodable)."""
    result = []
    for error in errors:
        loc = [printable(part) for part in error.get("loc", ())]
        result.append(
            FieldError(
                loc=[part if isinstance(part, int) else str(part) for part in loc],
                field=".".join(str(part) for part in loc),
                message=str(error.get("msg", "invalid")),
                type=str(error.get("type", "value_error")),
            )
        )
    return result


def validation_problem(request: Request | None, errors: list[FieldError]) -> JSONResponse:
    names = ", ".join(dict.fromkeys(error.field for error in errors))
    return problem_response(
        request,
        422,
        f"invalid request: {names}" if names else "invalid request",
        type=problem_type("validation"),
        title="Invalid request",
        errors=errors,
    )


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request,
        exc.status,
        exc.detail,
        title=exc.title,
        type=exc.type,
        headers=exc.headers,
        extensions=exc.extensions,
    )


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail == _phrase(exc.status_code):
        detail = None  # Starlette's default detail only repeats the title
    return problem_response(request, exc.status_code, detail, headers=exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(request, field_errors(exc.errors()))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the traceback itself; the client gets a problem, not a bare text/plain.
    return problem_response(request, 500, "internal server error")


def install_problem_handlers(
    app: FastAPI, extra: Mapping[type[Exception], Callable[..., Any]] | None = None
) -> None:
    """Answer every error of `app` as a problem and say so in its OpenAPI document. `extra`:
    more exception types -> handlers (e.g. a service's domain errors)."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    for exc_type, handler in (extra or {}).items():
        app.add_exception_handler(exc_type, handler)
    _document_problems(app)


def problem_responses(
    *codes: int, descriptions: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route's error answers, all `application/problem+json`."""
    described = descriptions or {}
    return {
        code: {
            "description": described.get(code, _phrase(code)),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for code in codes
    }


def _document_problems(app: FastAPI) -> None:
    """Put Problem and FieldError in the components, and turn FastAPI's automatic 422
    (HTTPValidationError, application/json) into the problem it really is."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
            servers=app.servers,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components["Problem"].pop("$defs", None)
        components["FieldError"] = FieldError.model_json_schema()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if "422" in responses and _is_fastapi_validation(responses["422"]):
                    responses["422"] = problem_responses(422)[422]
                    responses["422"]["description"] = "Invalid request (the fields are listed)"
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _is_fastapi_validation(response: Mapping[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
