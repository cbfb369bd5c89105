"""The do-it-now baseline: `python -m bench.baseline_app` (env BASELINE_*).

POST /blogs does, inside the request, what the platform delegates: the publisher's blog insert
(same table, same token check, same request validation), the author's `total_blogs + 1`, and the
Elasticsearch write of the blog document (same mapping and external version as the indexer).
It answers 201 once all three are done. Same process shape as the publisher: one uvicorn process
on uvloop + httptools, an asyncpg pool of the same size. It has no outbox, no relay and no
exactly-once bookkeeping: it is the simplest synchronous design, a fair lower bound of its cost.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
import uvicorn
from elasticsearch import AsyncElasticsearch
from fastapi import FastAPI, Header, HTTPException, Request, status
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.index import ensure_index
from publisher.app import MIGRATIONS_DIR, SCHEMA
from publisher.auth import author_for_token, bearer_token
from publisher.models import BlogDraft
from service_kit.logs import configure_logging
from service_kit.migrations import apply_migrations
from service_kit.serving import tune_gc

log = logging.getLogger(__name__)

_STATS_TABLE = """
CREATE SCHEMA IF NOT EXISTS baseline;
CREATE TABLE IF NOT EXISTS baseline.author_stats (
    author_id   uuid PRIMARY KEY,
    total_blogs integer NOT NULL
);
"""

_INSERT_BLOG = (
    "INSERT INTO publisher.blogs (id, author_id, title, body, tags, version)"
    " VALUES ($1, $2, $3, $4, $5, 1) RETURNING created_at"
)
_COUNT_BLOG = (
    "INSERT INTO baseline.author_stats AS a (author_id, total_blogs) VALUES ($1, 1)"
    " ON CONFLICT (author_id) DO UPDATE SET total_blogs = a.total_blogs + 1"
)


class BaselineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BASELINE_", extra="ignore", frozen=True)

    database_url: str = Field(min_length=1)
    es_url: str = Field(min_length=1)
    index_alias: str = Field(default="baseline-blogs", min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8010, ge=1, le=65535)
    db_pool_max_size: int = Field(default=10, ge=1)  # the publisher's default
    log_level: str = "INFO"


class Created(BaseModel):
    id: uuid.UUID
    version: int


def create_app(settings: BaselineSettings) -> FastAPI:
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await apply_migrations(settings.database_url, SCHEMA, MIGRATIONS_DIR)
        pool = await asyncpg.create_pool(
            settings.database_url, min_size=1, max_size=settings.db_pool_max_size
        )
        await pool.execute(_STATS_TABLE)
        es = AsyncElasticsearch(settings.es_url)
        await ensure_index(es, settings.index_alias, f"{settings.index_alias}-v1")
        state.update(pool=pool, es=es)
        try:
            yield
        finally:
            await es.close()
            await pool.close()

    app = FastAPI(title="baseline", lifespan=lifespan)

    @app.post("/blogs", status_code=status.HTTP_201_CREATED, response_model=Created)
    async def publish_blog(
        draft: BlogDraft, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Created:
        pool: asyncpg.Pool = state["pool"]
        es: AsyncElasticsearch = state["es"]
        token = bearer_token(authorization)
        blog_id = uuid.uuid4()
        async with pool.acquire() as conn:
            author_id = await author_for_token(conn, token) if token else None
            if author_id is None:
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token")
            async with conn.transaction():
                created_at = await conn.fetchval(
                    _INSERT_BLOG, blog_id, author_id, draft.title, draft.body, draft.tags
                )
                await conn.execute(_COUNT_BLOG, author_id)
        await es.index(
            index=settings.index_alias,
            id=str(blog_id),
            version=1,
            version_type="external",
            refresh=False,  # as the indexer: searchable after the next refresh
            document={
                "blog_id": str(blog_id),
                "author_id": str(author_id),
                "title": draft.title,
                "body": draft.body,
                "tags": draft.tags,
                "version": 1,
                "published_at": created_at.isoformat(),
                "updated_at": None,
                "deleted": False,
            },
        )
        return Created(id=blog_id, version=1)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    settings = BaselineSettings()  # from the environment
    configure_logging(settings.log_level)
    app = create_app(settings)
    # The services' collector settings too: the comparison is of designs, not of GC settings.
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
    )


if __name__ == "__main__":
    main()
