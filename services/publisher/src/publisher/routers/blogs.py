"""Blog writes (POST, PUT, DELETE: 202 once durable) and reads (GET one, GET an author's page).

A write may carry `Idempotency-Key` (a retry gets the first answer, nothing is written twice)
and, for PUT and DELETE, `If-Match` with the blog's ETag (a stale one gets 412). Every 202 has
`Location` = the status URL and `ETag` = the new version.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from publisher import idempotency
from publisher.auth import DbConnection
from publisher.dependencies import RuntimeDep, Writer, WriterDep
from publisher.errors import WRITE_ERRORS, InvalidCursorError, error_responses
from publisher.idempotency import IdempotentRequest, StoredAnswer
from publisher.models import BlogDraft, BlogOut, BlogPage, WriteAccepted
from publisher.preconditions import etag, none_match, parse_if_match
from publisher.store import Blog, PageCursor
from service_kit.problems import ProblemError

router = APIRouter(tags=["blogs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        description=(
            "A unique key per intended write (e.g. a UUID): a retry with the same key and the "
            "same request gets the first answer again (header `Idempotent-Replayed: true`) and "
            "writes nothing; the same key with another request gets 422, while the first is "
            "still in flight 409. Kept 24 h."
        ),
        max_length=1000,
    ),
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description=(
            'The blog\'s ETag as last read (e.g. `"3"`): the write happens only if the blog is '
            "still at that version, else 412 with `current_version`. Absent: unconditional."
        ),
        max_length=1000,
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match", description="An ETag: 304 if it is still current.", max_length=1000
    ),
]
ACCEPTED_HEADERS = {
    "Location": {"description": "The status URL of the write", "schema": {"type": "string"}},
    "ETag": {
        "description": "The blog's new version, as an entity tag",
        "schema": {"type": "string"},
    },
}


def status_url(blog: Blog) -> str:
    return f"/blogs/{blog.id}/status?version={blog.version}"


def accepted(blog: Blog) -> StoredAnswer:
    url = status_url(blog)
    body = WriteAccepted(id=blog.id, version=blog.version, status_url=url)
    return StoredAnswer(
        status=status.HTTP_202_ACCEPTED,
        body=body.model_dump(mode="json"),
        headers={"Location": url, "ETag": etag(blog.version)},
    )


def as_response(answer: StoredAnswer, *, replayed: bool = False) -> Response:
    headers = dict(answer.headers)
    if replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


async def answer_write(
    request: Request,
    who: Writer,
    key_header: str | None,
    if_match: str | None,
    body: Callable[[], bytes],
    write: Callable[[DbConnection], Awaitable[Blog]],
) -> Response:
    """Do the write on one pool connection, once per Idempotency-Key: the key, the write and its
    answer in one transaction (see `publisher.idempotency`). `body` (what the key's fingerprint
    covers) is only encoded when there is a key. The connection is back in the pool before the
    response is sent."""
    key = idempotency.parse_key(key_header)
    if key is None:
        async with who.rt.store.connection() as conn:
            blog = await write(conn)
        return as_response(accepted(blog))
    claimed = IdempotentRequest(
        who.author_id,
        key,
        idempotency.request_fingerprint(request.method, request.url.path, if_match, body()),
    )
    async with who.rt.store.connection() as conn, conn.transaction():
        stored = await idempotency.claim(conn, claimed)
        if stored is not None:
            return as_response(stored, replayed=True)
        answer = accepted(await write(conn))
        await idempotency.remember(conn, claimed, answer, who.rt.settings.idempotency_key_ttl_s)
    return as_response(answer)


def draft_body(draft: BlogDraft) -> Callable[[], bytes]:
    return lambda: draft.model_dump_json().encode()


WRITE_DOC = {
    "status_code": status.HTTP_202_ACCEPTED,
    "response_model": WriteAccepted,
}


@router.post(
    "/blogs",
    **WRITE_DOC,  # type: ignore[arg-type]
    responses={202: {"headers": ACCEPTED_HEADERS}, **error_responses(*WRITE_ERRORS)},
)
async def publish_blog(
    request: Request,
    draft: BlogDraft,
    who: WriterDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await answer_write(
        request,
        who,
        idempotency_key,
        None,
        draft_body(draft),
        lambda conn: who.rt.store.create(conn, who.author_id, draft),
    )


@router.put(
    "/blogs/{blog_id}",
    **WRITE_DOC,  # type: ignore[arg-type]
    responses={
        202: {"headers": ACCEPTED_HEADERS},
        **error_responses(*WRITE_ERRORS, 403, 404, 412),
    },
)
async def replace_blog(
    request: Request,
    blog_id: uuid.UUID,
    draft: BlogDraft,
    who: WriterDep,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    condition = parse_if_match(if_match)
    return await answer_write(
        request,
        who,
        idempotency_key,
        if_match,
        draft_body(draft),
        lambda conn: who.rt.store.replace(conn, blog_id, who.author_id, draft, condition),
    )


@router.delete(
    "/blogs/{blog_id}",
    **WRITE_DOC,  # type: ignore[arg-type]
    responses={
        202: {"headers": ACCEPTED_HEADERS},
        **error_responses(*WRITE_ERRORS, 403, 404, 412),
    },
)
async def delete_blog(
    request: Request,
    blog_id: uuid.UUID,
    who: WriterDep,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    condition = parse_if_match(if_match)
    return await answer_write(
        request,
        who,
        idempotency_key,
        if_match,
        lambda: b"",
        lambda conn: who.rt.store.delete(conn, blog_id, who.author_id, condition),
    )


@router.get(
    "/blogs/{blog_id}",
    response_model=BlogOut,
    responses={
        200: {"headers": {"ETag": ACCEPTED_HEADERS["ETag"] | {"description": "The version"}}},
        304: {"description": "Not modified: If-None-Match names the current version"},
        **error_responses(404, 503),
    },
)
async def get_blog(
    blog_id: uuid.UUID, rt: RuntimeDep, if_none_match: IfNoneMatch = None
) -> Response:
    blog = await rt.store.get(blog_id)
    if blog is None:
        raise ProblemError(404, "blog not found")
    headers = {"ETag": etag(blog.version)}
    if none_match(if_none_match, blog.version):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return JSONResponse(BlogOut.model_validate(blog).model_dump(mode="json"), headers=headers)


@router.get("/blogs", response_model=BlogPage, responses=error_responses(503))
async def list_blogs(
    rt: RuntimeDep,
    author: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> BlogPage:
    try:
        position = PageCursor.decode(cursor) if cursor else None
    except InvalidCursorError:
        # Same shape as every other 422: a list of errors, each naming its field.
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "cursor"),
                    "msg": "invalid cursor: use a next_cursor this API returned",
                    "input": cursor,
                }
            ]
        ) from None
    blogs, next_cursor = await rt.store.list_by_author(author, limit, position)
    return BlogPage(
        items=[BlogOut.model_validate(b) for b in blogs],
        next_cursor=next_cursor.encode() if next_cursor else None,
    )
