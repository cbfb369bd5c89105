"""Every error the publisher answers, in one place: its domain errors, what "PostgreSQL is
unavailable" looks like, and how each becomes an RFC 9457 problem (`service_kit.problems`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service_kit.pools import CONNECTION_LOST
from service_kit.problems import (
    install_problem_handlers,
    problem_response,
    problem_responses,
    problem_type,
)

log = logging.getLogger(__name__)

DB_RETRY_AFTER_S = 5

# What "PostgreSQL is unreachable" looks like to asyncpg: refused/reset connections, the server
# shutting down or starting up, and pool/connect timeouts.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    *CONNECTION_LOST,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# For health probes: any database failure means "not ready".
DATABASE_ERRORS: tuple[type[Exception], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)


class BlogNotFoundError(Exception):
    """The blog does not exist or is deleted."""


class NotBlogAuthorError(Exception):
    """The blog belongs to another author."""


class InvalidCursorError(ValueError):
    """A pagination cursor this service did not produce."""


class VersionMismatchError(Exception):
    """`If-Match` names versions the blog is not at (a concurrent write came first)."""

    def __init__(self, current_version: int, if_match: str) -> None:
        super().__init__(f"the blog is at version {current_version}; If-Match was {if_match}")
        self.current_version = current_version
        self.if_match = if_match


class IdempotencyKeyInFlight(Exception):
    """Another request with the same Idempotency-Key is being processed right now."""


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was used before for a different request."""


class InvalidIdempotencyKeyError(ValueError):
    """The Idempotency-Key header is not a 1..255 character printable ASCII string."""


STALE_VERSION = problem_type("stale-version")
IDEMPOTENCY_KEY_IN_FLIGHT = problem_type("idempotency-key-in-flight")
IDEMPOTENCY_KEY_REUSED = problem_type("idempotency-key-reused")
INVALID_IDEMPOTENCY_KEY = problem_type("invalid-idempotency-key")

DESCRIPTIONS: Mapping[int, str] = {
    400: "Malformed request (unparsable JSON, invalid Idempotency-Key header)",
    401: "Missing, invalid or revoked bearer token",
    403: "The blog belongs to another author",
    404: "The blog does not exist or is deleted",
    409: "A request with the same Idempotency-Key is still in flight: retry later",
    412: "If-Match does not match the blog's current version (in `current_version`, `ETag`)",
    413: "Request body too large",
    422: "Invalid request (the fields are listed), or an Idempotency-Key reused for another "
    "request",
    429: "Write rate limit exceeded (see Retry-After)",
    503: "Database unavailable (see Retry-After)",
}
WRITE_ERRORS = (400, 401, 409, 413, 422, 429, 503)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the problems a route answers."""
    return problem_responses(*codes, descriptions=DESCRIPTIONS)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %r", exc)
    return problem_response(
        request,
        503,
        "database unavailable, retry later",
        headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


async def _blog_not_found(request: Request, _exc: Exception) -> JSONResponse:
    return problem_response(request, 404, "blog not found")


async def _not_the_author(request: Request, _exc: Exception) -> JSONResponse:
    return problem_response(request, 403, "not the blog's author")


async def _version_mismatch(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VersionMismatchError)
    return problem_response(
        request,
        412,
        str(exc),
        type=STALE_VERSION,
        title="The blog changed since you read it",
        headers={"ETag": f'"{exc.current_version}"'},
        extensions={"current_version": exc.current_version},
    )


async def _key_in_flight(request: Request, _exc: Exception) -> JSONResponse:
    return problem_response(
        request,
        409,
        "a request with this Idempotency-Key is being processed; retry once it has finished",
        type=IDEMPOTENCY_KEY_IN_FLIGHT,
        title="Request in flight",
        headers={"Retry-After": "1"},
    )


async def _key_reused(request: Request, _exc: Exception) -> JSONResponse:
    return problem_response(
        request,
        422,
        "this Idempotency-Key was used for a different request; use a new key",
        type=IDEMPOTENCY_KEY_REUSED,
        title="Idempotency-Key reused",
    )


async def _invalid_key(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(
        request, 400, str(exc), type=INVALID_IDEMPOTENCY_KEY, title="Invalid Idempotency-Key"
    )


def install_error_handlers(app: FastAPI) -> None:
    handlers: dict[type[Exception], Any] = {
        BlogNotFoundError: _blog_not_found,
        NotBlogAuthorError: _not_the_author,
        VersionMismatchError: _version_mismatch,
        IdempotencyKeyInFlight: _key_in_flight,
        IdempotencyKeyReused: _key_reused,
        InvalidIdempotencyKeyError: _invalid_key,
    }
    for unavailable in DATABASE_UNAVAILABLE:
        handlers[unavailable] = _database_unavailable
    install_problem_handlers(app, extra=handlers)
