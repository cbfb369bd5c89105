"""Search: the query body (pure) and the shaping of Elasticsearch's answer into the API's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

# Elasticsearch's default index.max_result_window: from + size may not exceed it.
MAX_RESULT_WINDOW = 10_000
MAX_PAGE_SIZE = 100


class Highlights(BaseModel):
    title: list[str] = Field(default_factory=list)
    body: list[str] = Field(default_factory=list)


class SearchHit(BaseModel):
    blog_id: str
    author_id: str
    title: str
    tags: list[str]
    version: int
    published_at: str
    updated_at: str | None
    score: float | None
    highlights: Highlights


class SearchResponse(BaseModel):
    total: int
    page: int
    size: int
    hits: list[SearchHit]


class BlogDocument(BaseModel):
    blog_id: str
    author_id: str
    title: str
    body: str
    tags: list[str]
    version: int
    published_at: str
    updated_at: str | None


def search_body(
    *, q: str | None, author: str | None, tag: str | None, page: int, size: int
) -> dict[str, Any]:
    """Keyword arguments of `AsyncElasticsearch.search` for one page of results."""
    filters: list[dict[str, Any]] = []
    if author:
        filters.append({"term": {"author_id": author}})
    if tag:
        filters.append({"term": {"tags": tag}})
    query_text = q.strip() if q else ""
    must: dict[str, Any]
    sort: list[Any]
    if query_text:
        must = {"multi_match": {"query": query_text, "fields": ["title^2", "body"]}}
        # Relevance first; the rest only makes ties (and so pagination) deterministic.
        sort = ["_score", {"published_at": "desc"}, {"blog_id": "asc"}]
    else:
        must = {"match_all": {}}
        sort = [{"published_at": "desc"}, {"blog_id": "asc"}]
    return {
        # An explicit sort skips scoring unless asked for; the score is part of each hit.
        "track_scores": bool(query_text),
        "query": {
            "bool": {
                "must": [must],
                "filter": filters,
                # Tombstones (deleted blogs) stay in the index to keep their version.
                "must_not": [{"term": {"deleted": True}}],
            }
        },
        "sort": sort,
        "from_": (page - 1) * size,
        "size": size,
        "track_total_hits": True,
        "source_excludes": ["body"],
        "highlight": {
            # The html encoder escapes the text around the <em> marks, so a client may render
            # highlights as HTML without trusting the author's title or body.
            "encoder": "html",
            "pre_tags": ["<em>"],
            "post_tags": ["</em>"],
            "fields": {
                "title": {"number_of_fragments": 0},
                "body": {"fragment_size": 150, "number_of_fragments": 3},
            },
        },
    }


def search_response(raw: Mapping[str, Any], *, page: int, size: int) -> SearchResponse:
    hits_section = raw.get("hits", {})
    total = hits_section.get("total", {})
    hits = []
    for hit in hits_section.get("hits", []):
        source = hit.get("_source", {})
        highlight = hit.get("highlight", {})
        hits.append(
            SearchHit(
                blog_id=source["blog_id"],
                author_id=source["author_id"],
                title=source["title"],
                tags=source.get("tags", []),
                version=source["version"],
                published_at=source["published_at"],
                updated_at=source.get("updated_at"),
                score=hit.get("_score"),
                highlights=Highlights(
                    title=highlight.get("title", []), body=highlight.get("body", [])
                ),
            )
        )
    return SearchResponse(
        total=total.get("value", 0) if isinstance(total, Mapping) else int(total),
        page=page,
        size=size,
        hits=hits,
    )
