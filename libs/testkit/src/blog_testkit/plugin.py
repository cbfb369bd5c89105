"""The pytest plugin (entry point `pytest11: blog_testkit`): stack fixtures with per-test
isolation. Every fixture that needs the stack requests `stack`, so unit tests need nothing."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from elasticsearch import AsyncElasticsearch

from blog_testkit import processes
from blog_testkit.cluster import (
    CLUSTER_NODES,
    NOT_A_CLUSTER,
    REQUIRE_CLUSTER_ENV,
    KafkaCluster,
)
from blog_testkit.processes import ServiceProcess, free_port
from blog_testkit.stack import Stack, StackUnavailable, resolve_stack
from blog_testkit.waiting import wait_until
from service_kit import kafka_clients
from service_kit.kafka_admin import admin_client
from service_kit.topics import dead_letter_topic, reconcile, retry_topic, topic_specs

TEST_TOPIC_PARTITIONS = 6

ServiceProcessFactory = Callable[..., ServiceProcess]


def pytest_configure(config: pytest.Config) -> None:
    processes.artifacts_dir = config.rootpath / "test-artifacts"


def unique_name(prefix: str) -> str:
    """Lowercase, unique, valid as a Kafka topic, PostgreSQL identifier and ES index name."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def stack(pytestconfig: pytest.Config) -> Iterator[Stack]:
    with contextlib.ExitStack() as exit_stack:
        try:
            resolved = exit_stack.enter_context(resolve_stack(pytestconfig.rootpath, os.environ))
        except StackUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        # Every Kafka client the tests build logs in like the stack says (no-op in plaintext).
        kafka_clients.configure(resolved.kafka_security)
        yield resolved


@pytest.fixture(scope="session")
def kafka_cluster(stack: Stack, pytestconfig: pytest.Config) -> KafkaCluster:
    """The native stack's Kafka as a 3-node cluster. Skipped when the stack has fewer nodes
    (`make test` runs on one), failed instead when BLOG_REQUIRE_CLUSTER is set
    (`make test-cluster`), so a cluster run can never pass by skipping."""
    if stack.kafka_nodes < CLUSTER_NODES:
        message = NOT_A_CLUSTER.format(nodes=stack.kafka_nodes)
        if os.environ.get(REQUIRE_CLUSTER_ENV):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    script = pytestconfig.rootpath / "deploy" / "local" / "stack.sh"
    return KafkaCluster(stack.kafka_bootstrap, stack.kafka_nodes, script)


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def create_database(admin_dsn: str, prefix: str = "test_") -> tuple[str, str]:
    """Create a fresh, empty database; returns (name, its DSN)."""
    name = unique_name(prefix)
    # Identifiers cannot be bind parameters; `name` is generated here ([a-z0-9_] only).
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, with_database(admin_dsn, name)


async def create_service_database(
    admin_dsn: str, service_dsns: Mapping[str, str], prefix: str = "test_"
) -> tuple[str, str, dict[str, str]]:
    """A fresh database laid out like the stack's `blog` database: each service's schema created
    owned by its own role, nothing else. Returns (name, its admin DSN, service -> DSN of its role
    there). Without service roles (a container stack) every service gets the admin DSN."""
    name, admin_url = await create_database(admin_dsn, prefix)
    if not service_dsns:
        return name, admin_url, dict.fromkeys(("publisher", "counter"), admin_url)
    roles = {svc: urlsplit(dsn).username or svc for svc, dsn in service_dsns.items()}
    admin = await asyncpg.connect(admin_url)
    try:
        # Names from the stack's own env (role = service name); identifiers are quoted.
        for service, role in roles.items():
            await admin.execute(f'CREATE SCHEMA "{service}" AUTHORIZATION "{role}"')
        await admin.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
        grantees = ", ".join(f'"{role}"' for role in roles.values())
        await admin.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{name}" TO {grantees}')
    finally:
        await admin.close()
    return name, admin_url, {svc: with_database(dsn, name) for svc, dsn in service_dsns.items()}


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop it, cutting connections still open. A superuser process on it (an autovacuum
    worker) cannot be cut by the platform's role, so that case is retried until it is gone."""

    async def dropped() -> bool:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.InsufficientPrivilegeError:
            return False
        finally:
            await admin.close()
        return True

    await wait_until(dropped, timeout=30, what=f"database {name} dropped", interval=0.5)


@pytest_asyncio.fixture
async def database_url(stack: Stack) -> AsyncIterator[str]:
    """A fresh, empty database, dropped after the test (connections still open are cut)."""
    name, url = await create_database(stack.postgres_dsn)
    yield url
    await drop_database(stack.postgres_dsn, name)


@pytest_asyncio.fixture
async def service_database_urls(stack: Stack) -> AsyncIterator[dict[str, str]]:
    """A fresh database with each service's schema owned by its own role (as `make up` sets up
    the `blog` database): service -> DSN of that role. Dropped after the test."""
    name, _, urls = await create_service_database(stack.postgres_dsn, stack.service_dsns)
    yield urls
    await drop_database(stack.postgres_dsn, name)


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = TEST_TOPIC_PARTITIONS,
    *,
    groups: Iterable[str] = (),
) -> None:
    """The topic, and the dead-letter and retry topics of each consumer group in `groups`
    (`<name>.<group>.dlq`, `<name>.<group>.retry`), through the same code as `topics apply`:
    replication and min.insync.replicas `auto`, so a 3-node stack gets 3 copies and min ISR 2,
    like production."""
    names = [name, *(t for group in groups for t in group_topics(name, group))]
    await reconcile(bootstrap, topic_specs(names, partitions))


def group_topics(topic: str, group: str) -> list[str]:
    """What a consumer group of `topic` declares in its topics file: its DLQ and retry topic."""
    return [dead_letter_topic(topic, group), retry_topic(topic, group)]


async def create_dead_letter_topics(
    bootstrap: str, topic: str, groups: Iterable[str], partitions: int = TEST_TOPIC_PARTITIONS
) -> list[str]:
    """The dead-letter and retry topics of `groups` on `topic` (consumers wait for theirs); the
    dead-letter topics' names."""
    groups = list(groups)
    names = [t for group in groups for t in group_topics(topic, group)]
    await reconcile(bootstrap, topic_specs(names, partitions))
    return [dead_letter_topic(topic, group) for group in groups]


async def delete_topic(bootstrap: str, name: str) -> None:
    """The topic and every `<name>.*` topic (its groups' dead-letter topics); cleanup only, so a
    failure is ignored."""
    with contextlib.suppress(Exception):  # a leftover topic harms no later run
        async with admin_client(bootstrap) as admin:
            doomed = [t for t in await admin.list_topics() if t == name or t.startswith(f"{name}.")]
            if doomed:
                await admin.delete_topics(doomed)


async def delete_indices(es_url: str, prefix: str) -> None:
    """Every index named `<prefix>*`."""
    client = AsyncElasticsearch(es_url)
    try:
        # Wildcard deletes are refused by default (action.destructive_requires_name), so
        # resolve the names first.
        found = await client.indices.get(
            index=f"{prefix}*", expand_wildcards="all", allow_no_indices=True
        )
        if found:
            await client.indices.delete(index=",".join(found), ignore_unavailable=True)
    finally:
        await client.close()


@pytest_asyncio.fixture
async def topic(stack: Stack) -> AsyncIterator[str]:
    """A fresh topic with 6 partitions, deleted after the test with every `<topic>.*` topic.
    Derive consumer group ids from it so tests never share groups either; a consumer group
    needs its dead-letter and retry topics too (`create_dead_letter_topics`)."""
    name = unique_name("test-")
    await create_topic(stack.kafka_bootstrap, name)
    yield name
    await delete_topic(stack.kafka_bootstrap, name)


@pytest_asyncio.fixture
async def es_prefix(stack: Stack) -> AsyncIterator[str]:
    """A fresh lowercase prefix; every index `<prefix>*` is deleted after the test."""
    prefix = unique_name("test-")
    yield prefix
    await delete_indices(stack.es_url, prefix)


@pytest_asyncio.fixture
async def service_processes() -> AsyncIterator[ServiceProcessFactory]:
    """`service_processes(name, module, env, port=None)` -> a not yet started ServiceProcess
    (port None: a free one). Every process still running at teardown is killed."""
    created: list[ServiceProcess] = []

    def factory(
        name: str, module: str, env: Mapping[str, str], port: int | None = None
    ) -> ServiceProcess:
        process = ServiceProcess(name, module, env, free_port() if port is None else port)
        created.append(process)
        return process

    yield factory
    for process in created:
        if process.running:
            process.kill()
            await process.wait_exit(10)
