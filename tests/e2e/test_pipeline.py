"""End to end, through HTTP: blogs posted, updated and deleted by several authors end up counted
and searchable exactly once, and the publisher's status endpoint tells when each group got there."""

from __future__ import annotations

import random
from typing import Any

import pytest

from blog_testkit import wait_until
from tests.pipeline import Author, Pipeline

pytestmark = pytest.mark.e2e


async def post_blog(
    pipeline: Pipeline, author: Author, title: str, tags: list[str]
) -> dict[str, Any]:
    response = await pipeline.http.post(
        f"{pipeline.publisher.url}/blogs",
        json={"title": title, "body": f"The body of {title}.", "tags": tags},
        headers=author.headers,
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def test_counts_and_search_converge_on_what_was_posted(pipeline: Pipeline) -> None:
    rng = random.Random(7)
    authors = [await pipeline.create_author(f"author-{n}") for n in range(4)]
    # expected[author_id] = {blog_id: version} of live blogs
    expected: dict[str, dict[str, int]] = {a.author_id: {} for a in authors}
    for author in authors:
        for n in range(rng.randint(3, 6)):
            accepted = await post_blog(pipeline, author, f"Consumer groups part {n}", ["kafka"])
            assert accepted["version"] == 1
            assert accepted["status_url"] == f"/blogs/{accepted['id']}/status?version=1"
            expected[author.author_id][accepted["id"]] = 1

    # Every author updates one blog twice and deletes another.
    for author in authors:
        blog_ids = sorted(expected[author.author_id])
        updated, deleted = blog_ids[0], blog_ids[1]
        for version in (2, 3):
            response = await pipeline.http.put(
                f"{pipeline.publisher.url}/blogs/{updated}",
                json={"title": f"Revised {version}", "body": "Edited.", "tags": ["kafka", "edit"]},
                headers=author.headers,
            )
            assert response.status_code == 202, response.text
            assert response.json()["version"] == version
        expected[author.author_id][updated] = 3
        response = await pipeline.http.delete(
            f"{pipeline.publisher.url}/blogs/{deleted}", headers=author.headers
        )
        assert response.status_code == 202, response.text
        del expected[author.author_id][deleted]

    async def converged() -> bool:
        for author in authors:
            if await pipeline.total_blogs(author) != len(expected[author.author_id]):
                return False
            if await pipeline.indexed(author) != expected[author.author_id]:
                return False
        return True

    await wait_until(converged, timeout=60, what="counts and search equal what was posted")

    # The status endpoint agrees: every group has processed each live blog's latest event.
    some_blog = next(iter(expected[authors[0].author_id]))
    status = (await pipeline.http.get(f"{pipeline.publisher.url}/blogs/{some_blog}/status")).json()
    assert status["version"] == expected[authors[0].author_id][some_blog]
    assert status["event"] is not None
    assert all(group["processed"] for group in status["groups"].values()), status

    # A full-text search finds the revised title and highlights it.
    response = await pipeline.http.get(f"{pipeline.indexer.url}/search", params={"q": "revised"})
    hits = response.json()["hits"]
    assert {hit["author_id"] for hit in hits} == {a.author_id for a in authors}
    assert all("<em>" in " ".join(hit["highlights"].get("title", [])) for hit in hits)


async def test_status_turns_processed_when_groups_catch_up(pipeline: Pipeline) -> None:
    author = await pipeline.create_author("reader")
    accepted = await post_blog(pipeline, author, "Read your writes", ["status"])

    async def all_processed() -> dict[str, Any] | None:
        response = await pipeline.http.get(f"{pipeline.publisher.url}{accepted['status_url']}")
        body: dict[str, Any] = response.json()
        groups = body["groups"]
        return body if groups and all(g["processed"] for g in groups.values()) else None

    status = await wait_until(all_processed, timeout=30, what="both groups processed the blog")
    assert status is not None
    assert len(status["groups"]) == 2
    # Once processed, the effects are visible.
    assert await pipeline.total_blogs(author) == 1
