"""The indexer against the real stack: Kafka in, Elasticsearch documents out, exactly once by
external versioning whatever is redelivered (duplicates, replays after a delete, a crash between
the bulk and the offset commit, two instances in one group)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest
from elasticsearch import AsyncElasticsearch
from prometheus_client.parser import text_string_to_metric_families

from blog_events import BlogDeleted
from blog_events.fast import from_model
from blog_testkit import (
    BlogHistory,
    ServiceProcess,
    Stack,
    committed_offsets,
    free_port,
    group_members,
    produce,
    wait_for_zero_lag,
    wait_until,
)
from blog_testkit.faults import CRASH_EXIT_CODE, FAULTY_SERVICE_MODULE, faulty_service_env
from indexer.app import create_app
from indexer.documents import BulkItemsUnavailable
from indexer.handler import IS_TRANSIENT, make_batch_handler
from indexer.index import ensure_index
from indexer.settings import IndexerSettings
from service_kit.consumer import ConsumedEvent

pytestmark = pytest.mark.integration


ServiceProcessFactory = Callable[..., ServiceProcess]

SETTLE_TIMEOUT_S = 60.0
# Search sees new documents after the index refresh interval (1 s by default).
SEARCH_TIMEOUT_S = 15.0


def expected_index(history: BlogHistory) -> dict[str, tuple[int, bool, str | None]]:
    """blog id -> (version, deleted, title) the index must hold: each blog's latest event."""
    return {
        str(blog_id): (
            event.version,
            isinstance(event, BlogDeleted),
            None if isinstance(event, BlogDeleted) else event.title,
        )
        for blog_id, event in history.last.items()
    }


async def indexed_state(
    es: AsyncElasticsearch, alias: str
) -> dict[str, tuple[int, bool, str | None]]:
    """blog id -> (version, deleted, title) of every document in the index, tombstones too."""
    await es.indices.refresh(index=alias)
    response = await es.search(
        index=alias, query={"match_all": {}}, size=1000, version=True, track_total_hits=True
    )
    hits = response.body["hits"]["hits"]
    assert response.body["hits"]["total"]["value"] == len(hits)
    state = {}
    for hit in hits:
        source = hit["_source"]
        # External versioning: Elasticsearch's version is the blog's version.
        assert hit["_version"] == source["version"], hit
        state[hit["_id"]] = (source["version"], source["deleted"], source.get("title"))
    return state


def counter_value(
    metrics_text: str, sample_name: str, labels: Mapping[str, str] | None = None
) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                return float(sample.value)
    return 0.0


def settings_for(stack: Stack, topic: str, es_prefix: str) -> IndexerSettings:
    return IndexerSettings(
        es_url=stack.es_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"indexer-{topic}",
        index_alias=f"{es_prefix}blogs",
    )


def process_env(stack: Stack, topic: str, es_prefix: str, port: int) -> dict[str, str]:
    return {
        "INDEXER_ES_URL": stack.es_url,
        "INDEXER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "INDEXER_TOPIC": topic,
        "INDEXER_GROUP_ID": f"indexer-{topic}",
        "INDEXER_INDEX_ALIAS": f"{es_prefix}blogs",
        "INDEXER_PORT": str(port),
    }


@contextlib.asynccontextmanager
async def running_indexer(settings: IndexerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this process, lifespan included (index, consumer), behind an HTTP client."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://indexer"
        ) as client,
    ):
        yield client


async def search(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/search", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def hit_ids(result: Mapping[str, Any]) -> list[str]:
    return [hit["blog_id"] for hit in result["hits"]]


async def test_index_is_created_behind_the_alias_with_the_explicit_mapping(
    stack: Stack, topic: str, es_prefix: str, es: AsyncElasticsearch
) -> None:
    settings = settings_for(stack, topic, es_prefix)
    settings = settings.model_copy(update={"consumer_enabled": False})
    async with running_indexer(settings) as client:
        aliases = await es.indices.get_alias(name=settings.index_alias)
        assert aliases.body == {
            settings.index_name: {"aliases": {settings.index_alias: {"is_write_index": True}}}
        }
        mapping = await es.indices.get_mapping(index=settings.index_name)
        properties = mapping.body[settings.index_name]["mappings"]["properties"]
        assert properties["title"] == {"type": "text", "analyzer": "standard"}
        assert properties["version"] == {"type": "long"}
        assert properties["deleted"] == {"type": "boolean"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert (await client.get(f"/blogs/{uuid.uuid4()}")).status_code == 404
        assert (await search(client))["total"] == 0
    # A second start finds the alias and leaves it alone.
    async with running_indexer(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert list((await es.indices.get_alias(name=settings.index_alias)).body) == [
            settings.index_name
        ]


async def test_instances_starting_at_once_create_the_index_once(
    es_prefix: str, es: AsyncElasticsearch
) -> None:
    alias, index = f"{es_prefix}blogs", f"{es_prefix}blogs-v1"
    created = await asyncio.gather(*(ensure_index(es, alias, index) for _ in range(5)))
    assert sorted(created) == [False, False, False, False, True]
    assert list((await es.indices.get_alias(name=alias)).body) == [index]


async def test_a_batch_that_cannot_be_indexed_raises_instead_of_guessing(
    es_prefix: str, es: AsyncElasticsearch
) -> None:
    """Without the alias the bulk must fail (so the batch is retried, nothing committed) rather
    than auto-create an index with a guessed mapping."""
    missing_alias = f"{es_prefix}missing"
    handler = make_batch_handler(es, missing_alias)
    envelope = from_model(BlogHistory().publish(uuid.uuid4()))  # what the decoder hands over
    consumed = ConsumedEvent(envelope=envelope, topic="t", partition=0, offset=0, timestamp_ms=0)
    with pytest.raises(BulkItemsUnavailable) as failed:
        await handler([consumed])
    # The alias is missing for every document: an outage to wait out, not poison.
    assert IS_TRANSIENT(failed.value)
    assert not await es.indices.exists(index=missing_alias)


async def test_publish_update_delete_reach_search_and_the_document_api(
    stack: Stack, topic: str, es_prefix: str
) -> None:
    settings = settings_for(stack, topic, es_prefix)
    history = BlogHistory()
    author = uuid.uuid4()
    kafka_blog = history.publish(author, title="Exactly once with Kafka", tags=("kafka",))
    garden_blog = history.publish(author, title="Gardening notes", tags=("garden",))
    kafka_id = str(kafka_blog.payload.blog_id)

    async with running_indexer(settings) as client:
        await produce(stack.kafka_bootstrap, topic, [kafka_blog, garden_blog])

        async def kafka_blog_found() -> bool:
            return hit_ids(await search(client, q="kafka")) == [kafka_id]

        await wait_until(kafka_blog_found, timeout=SEARCH_TIMEOUT_S, what="published blog found")
        document = (await client.get(f"/blogs/{kafka_id}")).json()
        assert document["version"] == 1
        assert document["title"] == "Exactly once with Kafka"
        assert document["tags"] == ["kafka"]
        assert document["updated_at"] is None

        await produce(
            stack.kafka_bootstrap,
            topic,
            [history.update(kafka_blog.payload.blog_id, title="Idempotent consumers")],
        )

        async def update_found() -> bool:
            result = await search(client, q="idempotent")
            return hit_ids(result) == [kafka_id] and result["hits"][0]["version"] == 2

        await wait_until(update_found, timeout=SEARCH_TIMEOUT_S, what="updated blog found")
        assert hit_ids(await search(client, q="gardening")) == [str(garden_blog.payload.blog_id)]
        document = (await client.get(f"/blogs/{kafka_id}")).json()
        assert (document["version"], document["title"]) == (2, "Idempotent consumers")
        assert document["updated_at"] is not None

        await produce(stack.kafka_bootstrap, topic, [history.delete(kafka_blog.payload.blog_id)])

        async def deleted_gone() -> bool:
            total: int = (await search(client, q="idempotent"))["total"]
            return total == 0

        await wait_until(deleted_gone, timeout=SEARCH_TIMEOUT_S, what="deleted blog gone")
        assert (await client.get(f"/blogs/{kafka_id}")).status_code == 404
        everything = await search(client)
        assert hit_ids(everything) == [str(garden_blog.payload.blog_id)]
        assert everything["total"] == 1
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)


async def test_replayed_publish_after_delete_does_not_resurrect_the_blog(
    stack: Stack, topic: str, es_prefix: str, es: AsyncElasticsearch
) -> None:
    settings = settings_for(stack, topic, es_prefix)
    history = BlogHistory()
    publish = history.publish(uuid.uuid4(), title="Short lived")
    blog_id = str(publish.payload.blog_id)

    async with running_indexer(settings) as client:
        await produce(
            stack.kafka_bootstrap, topic, [publish, history.delete(publish.payload.blog_id)]
        )
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        tombstone = await es.get(index=settings.index_alias, id=blog_id)
        assert tombstone["_version"] == 2
        assert tombstone["_source"]["deleted"] is True
        conflicts_before = counter_value(
            (await client.get("/metrics")).text, "indexer_version_conflicts_total"
        )

        # The old publish again (a replay from the start of the log, or a re-sending relay).
        await produce(stack.kafka_bootstrap, topic, [publish])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)

        conflicts_after = counter_value(
            (await client.get("/metrics")).text, "indexer_version_conflicts_total"
        )
        assert conflicts_after == conflicts_before + 1  # processed, and rejected as applied
        tombstone = await es.get(index=settings.index_alias, id=blog_id)
        assert tombstone["_version"] == 2
        assert tombstone["_source"]["deleted"] is True
        assert (await client.get(f"/blogs/{blog_id}")).status_code == 404
        await es.indices.refresh(index=settings.index_alias)
        assert (await search(client, q="short lived"))["total"] == 0


async def test_a_duplicated_event_is_indexed_once(
    stack: Stack, topic: str, es_prefix: str, es: AsyncElasticsearch
) -> None:
    settings = settings_for(stack, topic, es_prefix)
    history = BlogHistory()
    publish = history.publish(uuid.uuid4(), title="Said twice")
    blog_id = str(publish.payload.blog_id)

    async with running_indexer(settings):
        # The very same event at two offsets (a relay that crashed before marking it sent).
        await produce(stack.kafka_bootstrap, topic, [publish])
        await produce(stack.kafka_bootstrap, topic, [publish])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        document = await es.get(index=settings.index_alias, id=blog_id)
        assert (document["_version"], document["_seq_no"]) == (1, 0)

        update = history.update(publish.payload.blog_id, title="Said twice, edited")
        await produce(stack.kafka_bootstrap, topic, [update])
        await produce(stack.kafka_bootstrap, topic, [update, publish])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)

    document = await es.get(index=settings.index_alias, id=blog_id)
    # One write per version: a second write of either would have taken another sequence number.
    assert (document["_version"], document["_seq_no"]) == (2, 1)
    assert document["_source"]["title"] == "Said twice, edited"
    assert await indexed_state(es, settings.index_alias) == expected_index(history)


async def test_search_highlights_filters_ordering_and_paging(
    stack: Stack, topic: str, es_prefix: str, es: AsyncElasticsearch
) -> None:
    settings = settings_for(stack, topic, es_prefix)
    history = BlogHistory()
    alice, bob = uuid.uuid4(), uuid.uuid4()
    in_title = history.publish(
        alice,
        title="Kafka consumer groups",
        body="Partitions are shared by the members of a group. <b>Kafka</b> rebalances them.",
        tags=("kafka", "streaming"),
    )
    in_body = history.publish(
        bob, title="Python tips", body="Use asyncio with kafka clients.", tags=("python",)
    )
    unrelated = history.publish(alice, title="Cooking rice", body="Water.", tags=("python",))
    ids = {
        name: str(e.payload.blog_id)
        for name, e in (("in_title", in_title), ("in_body", in_body), ("unrelated", unrelated))
    }

    async with running_indexer(settings) as client:
        await produce(stack.kafka_bootstrap, topic, [in_title, in_body, unrelated])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        await es.indices.refresh(index=settings.index_alias)

        result = await search(client, q="kafka")
        # The title match outranks the body-only match (title^2).
        assert hit_ids(result) == [ids["in_title"], ids["in_body"]]
        assert result["total"] == 2
        first, second = result["hits"]
        assert first["highlights"]["title"] == ["<em>Kafka</em> consumer groups"]
        assert any("<em>Kafka</em>" in fragment for fragment in first["highlights"]["body"])
        # The author's own markup comes back escaped; only the highlight marks are HTML.
        assert all("<b>" not in fragment for fragment in first["highlights"]["body"])
        assert any("&lt;b&gt;" in fragment for fragment in first["highlights"]["body"])
        assert second["highlights"]["title"] == []
        assert second["highlights"]["body"] == ["Use asyncio with <em>kafka</em> clients."]
        assert first["score"] > second["score"] > 0
        assert set(first) == {
            "blog_id",
            "author_id",
            "title",
            "tags",
            "version",
            "published_at",
            "updated_at",
            "score",
            "highlights",
        }
        assert first["author_id"] == str(alice)
        assert first["tags"] == ["kafka", "streaming"]

        # Without q: everything, newest first.
        assert hit_ids(await search(client)) == [ids["unrelated"], ids["in_body"], ids["in_title"]]
        assert hit_ids(await search(client, author=str(alice))) == [
            ids["unrelated"],
            ids["in_title"],
        ]
        assert hit_ids(await search(client, tag="python")) == [ids["unrelated"], ids["in_body"]]
        assert hit_ids(await search(client, q="kafka", tag="python")) == [ids["in_body"]]
        assert hit_ids(await search(client, q="kafka", author=str(bob))) == [ids["in_body"]]
        assert (await search(client, q="nothing-matches-this"))["total"] == 0

        page_two = await search(client, page=2, size=2)
        assert (page_two["total"], page_two["page"], page_two["size"]) == (3, 2, 2)
        assert hit_ids(page_two) == [ids["in_title"]]

        for bad in ({"size": 101}, {"size": 0}, {"page": 0}, {"page": 101, "size": 100}):
            response = await client.get("/search", params=bad)
            assert response.status_code == 422, (bad, response.text)
        assert (await client.get("/search", params={"page": 100, "size": 100})).status_code == 200


async def test_crash_after_the_bulk_before_the_commit_leaves_the_index_exact(
    stack: Stack,
    topic: str,
    es_prefix: str,
    es: AsyncElasticsearch,
    service_processes: ServiceProcessFactory,
) -> None:
    group_id = f"indexer-{topic}"
    alias = f"{es_prefix}blogs"
    port = free_port()
    env = process_env(stack, topic, es_prefix, port)
    crashing = service_processes(
        "indexer-crash",
        FAULTY_SERVICE_MODULE,
        {**env, **faulty_service_env("indexer", port, crash_after=1)},
        port,
    )
    await crashing.start()

    history = BlogHistory()
    authors = [uuid.uuid4() for _ in range(3)]
    published = [history.publish(authors[i % 3], title=f"blog {i}") for i in range(30)]
    events = [
        *published,
        *(history.update(e.payload.blog_id) for e in published[:10]),
        *(history.update(e.payload.blog_id) for e in published[:5]),
        *(history.delete(e.payload.blog_id) for e in published[5:12]),
        *published[:8],  # redelivered old versions
    ]
    await produce(stack.kafka_bootstrap, topic, events)

    returncode = await crashing.wait_exit(SETTLE_TIMEOUT_S)
    assert returncode == CRASH_EXIT_CODE, crashing.log_tail()
    # The crash came after the bulk was acknowledged and before the offset commit: documents
    # are there, and Kafka will deliver the same events again.
    assert len(await indexed_state(es, alias)) > 0
    assert await committed_offsets(stack.kafka_bootstrap, group_id) == {}

    restarted = service_processes("indexer-restarted", "indexer", env, port)
    await restarted.start()
    await wait_for_zero_lag(stack.kafka_bootstrap, group_id, topic, SETTLE_TIMEOUT_S)
    assert await indexed_state(es, alias) == expected_index(history)
    async with httpx.AsyncClient(base_url=restarted.url) as client:
        result = await search(client, size=100)
        live = {
            blog_id for blog_id, (_, deleted, _) in expected_index(history).items() if not deleted
        }
        assert result["total"] == len(live) == 23
        assert set(hit_ids(result)) == live
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
    assert await restarted.terminate() == 0


async def test_two_instances_share_the_partitions_and_index_exactly(
    stack: Stack,
    topic: str,
    es_prefix: str,
    es: AsyncElasticsearch,
    service_processes: ServiceProcessFactory,
) -> None:
    group_id = f"indexer-{topic}"
    alias = f"{es_prefix}blogs"
    instances = []
    for n in (1, 2):
        port = free_port()
        instance = service_processes(
            f"indexer-{n}", "indexer", process_env(stack, topic, es_prefix, port), port
        )
        await instance.start()
        instances.append(instance)

    async def both_members_assigned() -> bool:
        group = await group_members(stack.kafka_bootstrap, group_id)
        return group["state"] == "Stable" and len(group["members"]) == 2

    await wait_until(both_members_assigned, timeout=SETTLE_TIMEOUT_S, what="2 stable members")

    history = BlogHistory()
    authors = [uuid.uuid4() for _ in range(3)]
    published = [history.publish(authors[i % 3], title=f"blog {i}") for i in range(60)]
    events = [
        *published,
        *(history.update(e.payload.blog_id) for e in published[15:30]),
        *(history.delete(e.payload.blog_id) for e in published[:15]),
    ]
    await produce(stack.kafka_bootstrap, topic, events)
    await produce(stack.kafka_bootstrap, topic, published[:10])  # redelivered old versions
    await wait_for_zero_lag(stack.kafka_bootstrap, group_id, topic, SETTLE_TIMEOUT_S)
    assert await indexed_state(es, alias) == expected_index(history)

    for instance in instances:
        async with httpx.AsyncClient(base_url=instance.url) as client:
            metrics = (await client.get("/metrics")).text
            processed = counter_value(
                metrics, "blog_consumer_events_processed_total", {"group": group_id}
            )
            assert processed > 0, f"{instance.name} got no partition"

    # One instance leaves gracefully; the other takes over all partitions.
    first, second = instances
    assert await first.terminate() == 0
    more = [history.update(e.payload.blog_id, title="after the rebalance") for e in published[30:]]
    await produce(stack.kafka_bootstrap, topic, more)
    await wait_for_zero_lag(stack.kafka_bootstrap, group_id, topic, SETTLE_TIMEOUT_S)
    assert await indexed_state(es, alias) == expected_index(history)
    async with httpx.AsyncClient(base_url=second.url) as client:
        result = await search(client, q="rebalance", size=100)
        assert result["total"] == 30
    assert await second.terminate() == 0
