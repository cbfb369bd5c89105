"""The counter against the real stack: Kafka in, PostgreSQL counts out, exactly once whatever is
redelivered (duplicates, crash between effect and offset commit, two instances, rebalances)."""

from __future__ import annotations

import contextlib
import re
import signal
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from blog_events import encode_event
from blog_testkit import (
    BlogHistory,
    ServiceProcess,
    Stack,
    end_offsets,
    free_port,
    group_lag,
    group_members,
    produce,
    wait_for_zero_lag,
    wait_until,
)
from blog_testkit.faults import (
    CRASH_EXIT_CODE,
    CRASH_LOG_LINE,
    FAULTY_SERVICE_MODULE,
    faulty_service_env,
)
from blog_testkit.plugin import create_dead_letter_topics
from counter.app import create_app
from counter.settings import Settings

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def topic(topic: str, stack: Stack) -> str:
    """The plugin's fresh topic, plus the dead-letter topic of this module's consumer group(s):
    consumers wait for both before they consume."""
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [f"counter-{topic}"])
    return topic


ServiceProcessFactory = Callable[..., ServiceProcess]

SETTLE_TIMEOUT_S = 60.0


async def totals_in_db(database_url: str) -> dict[uuid.UUID, int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT author_id, total_blogs FROM counter.author_stats")
    finally:
        await connection.close()
    return {row["author_id"]: row["total_blogs"] for row in rows}


async def blog_rows_in_db(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM counter.blog_state")
        return count
    finally:
        await connection.close()


async def stats(client: httpx.AsyncClient, author_id: uuid.UUID | str) -> httpx.Response:
    return await client.get(f"/authors/{author_id}/stats")


async def total_blogs(client: httpx.AsyncClient, author_id: uuid.UUID) -> int:
    response = await stats(client, author_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["author_id"] == str(author_id)
    total: int = body["total_blogs"]
    return total


def settings_for(stack: Stack, database_url: str, topic: str) -> Settings:
    return Settings(
        database_url=database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"counter-{topic}",
    )


@contextlib.asynccontextmanager
async def running_counter(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this process, lifespan included (migrations, consumer), behind an HTTP client."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://counter"
        ) as client,
    ):
        yield client


async def assert_graceful_stop(process: ServiceProcess) -> None:
    """SIGTERM: the lifespan shutdown runs (consumer stopped, group left). Uvicorn re-raises the
    signal after its shutdown, so the exit status is the SIGTERM one."""
    returncode = await process.terminate()
    assert returncode in (0, -signal.SIGTERM), process.log_tail()
    log = process.log_text()
    assert re.search(r"consumer group \S+ stopped", log), process.log_tail()
    assert "Application shutdown complete" in log


def process_env(stack: Stack, database_url: str, topic: str, port: int) -> dict[str, str]:
    return {
        "COUNTER_DATABASE_URL": database_url,
        "COUNTER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "COUNTER_TOPIC": topic,
        "COUNTER_GROUP_ID": f"counter-{topic}",
        "COUNTER_PORT": str(port),
    }


async def test_counts_follow_publish_update_delete_for_two_authors(
    stack: Stack, database_url: str, topic: str
) -> None:
    settings = settings_for(stack, database_url, topic)
    history = BlogHistory()
    alice, bob, nobody = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    alice_blogs = [history.publish(alice) for _ in range(3)]
    bob_blogs = [history.publish(bob) for _ in range(2)]

    async with running_counter(settings) as client:
        await produce(stack.kafka_bootstrap, topic, [*alice_blogs, *bob_blogs])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        assert await total_blogs(client, alice) == 3
        assert await total_blogs(client, bob) == 2

        first, second, _ = (e.payload.blog_id for e in alice_blogs)
        await produce(
            stack.kafka_bootstrap,
            topic,
            [
                history.update(first),
                history.update(first),
                history.delete(second),
                *(history.delete(e.payload.blog_id) for e in bob_blogs),
            ],
        )
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        assert await total_blogs(client, alice) == 2
        assert await total_blogs(client, bob) == 0
        assert await total_blogs(client, nobody) == 0  # an author without blogs is valid

        assert (await stats(client, "not-a-uuid")).status_code == 422
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        metrics = (await client.get("/metrics")).text
        assert "counter_blog_changes_applied_total" in metrics

    assert await totals_in_db(database_url) == {alice: 2, bob: 0}
    assert await blog_rows_in_db(database_url) == 5


async def test_the_same_event_at_two_offsets_and_a_replay_count_once(
    stack: Stack, database_url: str, topic: str
) -> None:
    settings = settings_for(stack, database_url, topic)
    history = BlogHistory()
    author = uuid.uuid4()
    publish = history.publish(author)
    kept = history.publish(author)

    async with running_counter(settings) as client:
        # Two sends of the very same event (a relay that crashed before marking it sent).
        await produce(stack.kafka_bootstrap, topic, [publish, kept])
        await produce(stack.kafka_bootstrap, topic, [publish])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        assert sum((await end_offsets(stack.kafka_bootstrap, topic)).values()) == 3
        assert await total_blogs(client, author) == 2

        # A replay of the older publish after the delete must not resurrect the blog.
        await produce(stack.kafka_bootstrap, topic, [history.delete(publish.payload.blog_id)])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        await produce(stack.kafka_bootstrap, topic, [publish])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        assert await total_blogs(client, author) == 1


async def test_crash_between_effect_and_offset_commit_does_not_count_twice(
    stack: Stack, database_url: str, topic: str, service_processes: ServiceProcessFactory
) -> None:
    group_id = f"counter-{topic}"
    port = free_port()
    env = process_env(stack, database_url, topic, port)
    crashing = service_processes(
        "counter-crash",
        FAULTY_SERVICE_MODULE,
        {**env, **faulty_service_env("counter", port, crash_after=1)},
        port,
    )
    await crashing.start()

    history = BlogHistory()
    authors = [uuid.uuid4(), uuid.uuid4()]
    events = [history.publish(author) for author in authors for _ in range(10)]
    events += [history.delete(e.payload.blog_id) for e in events[:3]]  # first author loses 3
    await produce(stack.kafka_bootstrap, topic, events)

    returncode = await crashing.wait_exit(SETTLE_TIMEOUT_S)
    assert returncode == CRASH_EXIT_CODE, crashing.log_tail()
    assert CRASH_LOG_LINE in crashing.log_text()
    # The crash came after the DB commit and before the offset commit: the effect is there,
    # and Kafka will deliver the same events again.
    assert await blog_rows_in_db(database_url) > 0
    assert sum((await totals_in_db(database_url)).values()) > 0
    assert await group_lag(stack.kafka_bootstrap, group_id, topic) > 0

    restarted = service_processes("counter-restarted", "counter", env, port)
    await restarted.start()
    await wait_for_zero_lag(stack.kafka_bootstrap, group_id, topic, SETTLE_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=restarted.url) as client:
        assert await total_blogs(client, authors[0]) == 7
        assert await total_blogs(client, authors[1]) == 10
    assert await totals_in_db(database_url) == {authors[0]: 7, authors[1]: 10}
    assert await blog_rows_in_db(database_url) == 20
    await assert_graceful_stop(restarted)


async def applied_changes(client: httpx.AsyncClient) -> float:
    metrics = (await client.get("/metrics")).text
    for line in metrics.splitlines():
        if line.startswith("counter_blog_changes_applied_total "):
            return float(line.split()[1])
    raise AssertionError("counter_blog_changes_applied_total missing from /metrics")


async def test_two_instances_share_the_partitions_and_count_exactly(
    stack: Stack, database_url: str, topic: str, service_processes: ServiceProcessFactory
) -> None:
    group_id = f"counter-{topic}"
    instances = []
    for n in (1, 2):
        port = free_port()
        instance = service_processes(
            f"counter-{n}", "counter", process_env(stack, database_url, topic, port), port
        )
        await instance.start()
        instances.append(instance)

    async def both_members_assigned() -> bool:
        group = await group_members(stack.kafka_bootstrap, group_id)
        return group["state"] == "Stable" and len(group["members"]) == 2

    await wait_until(both_members_assigned, timeout=SETTLE_TIMEOUT_S, what="2 stable members")

    history = BlogHistory()
    authors = [uuid.uuid4() for _ in range(3)]
    published = [history.publish(authors[i % 3]) for i in range(60)]
    removed = published[:15]  # 5 per author
    events = [
        *published,
        *(history.update(e.payload.blog_id) for e in published[15:30]),
        *(history.delete(e.payload.blog_id) for e in removed),
    ]
    await produce(stack.kafka_bootstrap, topic, events)
    await produce(stack.kafka_bootstrap, topic, published[:10])  # redelivered old versions
    await wait_for_zero_lag(stack.kafka_bootstrap, group_id, topic, SETTLE_TIMEOUT_S)

    assert await totals_in_db(database_url) == dict.fromkeys(authors, 15)
    for instance in instances:
        async with httpx.AsyncClient(base_url=instance.url) as client:
            assert await applied_changes(client) > 0, f"{instance.name} got no partition"
            for author in authors:
                assert await total_blogs(client, author) == 15
    for instance in instances:
        await assert_graceful_stop(instance)


async def test_an_undecodable_message_goes_to_the_dlq_and_counting_goes_on(
    stack: Stack, database_url: str, topic: str
) -> None:
    settings = settings_for(stack, database_url, topic)
    history = BlogHistory()
    author = uuid.uuid4()
    before, after = history.publish(author), history.publish(author)

    async with running_counter(settings) as client:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for value in (encode_event(before), b'{"not": "an event"}', encode_event(after)):
                await producer.send_and_wait(topic, value, key=before.key.encode())
        finally:
            await producer.stop()
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, SETTLE_TIMEOUT_S)
        assert await total_blogs(client, author) == 2

    assert sum((await end_offsets(stack.kafka_bootstrap, settings.dlq_topic)).values()) == 1


async def test_without_the_consumer_the_api_serves_and_is_ready(
    stack: Stack, database_url: str
) -> None:
    settings = Settings(
        database_url=database_url,
        kafka_bootstrap_servers="127.0.0.1:9",  # never contacted
        consumer_enabled=False,
    )
    async with running_counter(settings) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "consumer": "disabled"}
        assert (await client.get("/healthz")).status_code == 200
        assert await total_blogs(client, uuid.uuid4()) == 0


async def test_not_ready_naming_its_missing_dead_letter_topic_until_it_exists(
    stack: Stack, database_url: str, topic: str
) -> None:
    # A group whose dead-letter topic nobody created: the counter never creates topics.
    settings = Settings(
        database_url=database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"unprepared-{topic}",
    )
    async with running_counter(settings) as client:

        async def not_ready_naming_it() -> bool:
            ready = await client.get("/readyz")
            consumer = ready.json()["checks"]["consumer"]
            return ready.status_code == 503 and f"topic {settings.dlq_topic} does not exist" in (
                consumer
            )

        await wait_until(not_ready_naming_it, timeout=SETTLE_TIMEOUT_S, what="503 naming the DLQ")
        await create_dead_letter_topics(stack.kafka_bootstrap, topic, [settings.group_id])

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_until(ready, timeout=SETTLE_TIMEOUT_S, what="ready once the DLQ exists")
