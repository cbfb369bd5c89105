"""Kafka least privilege on the local stack (`KAFKA_AUTH=scram make up`, `make test-acl`): each
service logs in as its own SCRAM user with exactly the ACLs of its KafkaUser manifest
(deploy/k8s/platform/kafka-users.yaml). The counter's user cannot write `blog-events` nor join
group `indexer`; publisher -> counter -> indexer and lagmon work end to end, each with its own
credentials, on the production topic and group names (the ACLs name them)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from pydantic import SecretStr

from blog_events import TOPIC
from blog_testkit import ServiceProcess, Stack, wait_until
from service_kit.kafka_clients import KafkaSecurity, client_options

# integration too: `make test-unit` (no stack) leaves them out.
pytestmark = [pytest.mark.acl, pytest.mark.integration]

REQUIRE_ACL_ENV = "BLOG_REQUIRE_ACL"
SERVICES = ("publisher", "counter", "indexer", "lagmon")


def user_security(stack: Stack, user: str) -> KafkaSecurity:
    """`user`'s own credentials (BLOG_KAFKA_<USER>_PASSWORD in the scram stack's env); the test
    is skipped on a plaintext stack (failed under `make test-acl`: it must not pass by skipping)."""
    password = os.environ.get(f"BLOG_KAFKA_{user.upper()}_PASSWORD")
    if stack.kafka_security.security_protocol == "PLAINTEXT" or not password:
        message = "needs the stack with KAFKA_AUTH=scram (make test-acl starts it)"
        if os.environ.get(REQUIRE_ACL_ENV):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return KafkaSecurity(
        security_protocol=stack.kafka_security.security_protocol,
        sasl_mechanism=stack.kafka_security.sasl_mechanism,
        sasl_username=user,
        sasl_password=SecretStr(password),
    )


def service_env(stack: Stack, service: str) -> dict[str, str]:
    """The service's own Kafka login, as its settings read it (`<PREFIX>_KAFKA_*`)."""
    security = user_security(stack, service)
    assert security.sasl_password is not None
    prefix = service.upper()
    return {
        f"{prefix}_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        f"{prefix}_KAFKA_SECURITY_PROTOCOL": security.security_protocol,
        f"{prefix}_KAFKA_SASL_MECHANISM": str(security.sasl_mechanism),
        f"{prefix}_KAFKA_SASL_USERNAME": service,
        f"{prefix}_KAFKA_SASL_PASSWORD": security.sasl_password.get_secret_value(),
    }


def kafka_acls_module() -> Any:
    """deploy/local/kafka_acls.py, the script `make up` applies the manifests with."""
    path = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka_acls.py"
    spec = importlib.util.spec_from_file_location("kafka_acls", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_each_users_acls_are_exactly_its_kafkauser_manifests(stack: Stack) -> None:
    user_security(stack, "counter")  # skips on a plaintext stack
    acls = kafka_acls_module()
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, **client_options())
    await admin.start()
    try:
        for user, wanted in acls.users().items():
            assert await acls.current_acls(admin, f"User:{user}") == wanted, user
            print(f"\nUser:{user}: {len(wanted)} ACL(s), as in kafka-users.yaml")
    finally:
        await admin.close()


async def test_the_counters_user_cannot_write_blog_events(stack: Stack) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap,
        acks="all",
        request_timeout_ms=10_000,
        **user_security(stack, "counter").options(),
    )
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError) as denied:
            await producer.send_and_wait(TOPIC, b"forged by the counter", key=b"k")
    finally:
        await producer.stop()
    print(f"\ncounter -> produce to {TOPIC}: {denied.value!r}")


async def test_the_counters_user_cannot_join_group_indexer(stack: Stack) -> None:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id="indexer",
        enable_auto_commit=False,
        **user_security(stack, "counter").options(),
    )
    try:
        # Starting a group's consumer looks up the group's coordinator: denied already.
        with pytest.raises(GroupAuthorizationFailedError) as denied:
            await consumer.start()
    finally:
        await consumer.stop()
    print(f"\ncounter -> join group indexer: {denied.value!r}")


async def test_the_counters_user_can_do_what_it_does(stack: Stack) -> None:
    """The denials above are the ACLs, not broken credentials: the same user reads blog-events
    as group `counter`."""
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id="counter",
        enable_auto_commit=False,
        **user_security(stack, "counter").options(),
    )
    await consumer.start()
    try:
        await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
        assert consumer.assignment(), "group counter joined, partitions of blog-events assigned"
    finally:
        await consumer.stop()
    print(f"\ncounter -> join group counter, read {TOPIC}: allowed")


async def test_publisher_counter_indexer_and_lagmon_with_their_own_users(
    stack: Stack,
    service_database_urls: dict[str, str],
    es_prefix: str,
    service_processes: Callable[..., ServiceProcess],
) -> None:
    envs = {service: service_env(stack, service) for service in SERVICES}
    envs["publisher"] |= {
        "PUBLISHER_DATABASE_URL": service_database_urls["publisher"],
        "PUBLISHER_STATUS_GROUPS": json.dumps(["counter", "indexer"]),
    }
    envs["counter"] |= {"COUNTER_DATABASE_URL": service_database_urls["counter"]}
    envs["indexer"] |= {"INDEXER_ES_URL": stack.es_url, "INDEXER_INDEX_ALIAS": f"{es_prefix}blogs"}
    envs["lagmon"] |= {"LAGMON_POLL_INTERVAL_S": "0.5"}
    # None of them may fall back to the stack's admin user.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BLOG_KAFKA_SASL")}
    processes = {
        name: service_processes(f"acl-{name}", name, {**env}) for name, env in envs.items()
    }
    for name, process in processes.items():
        process.env[f"{name.upper()}_PORT"] = str(process.port)

    author = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher", "create-author", "--name", "acl",
        env={**clean, **envs["publisher"]},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await author.communicate()
    assert author.returncode == 0, err.decode()
    created = json.loads(out)
    await asyncio.gather(*(process.start() for process in processes.values()))
    publisher, counter, indexer = processes["publisher"], processes["counter"], processes["indexer"]
    lagmon = processes["lagmon"]

    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{publisher.url}/blogs",
            json={"title": "Least privilege", "body": "Each with its own user.", "tags": []},
            headers={"Authorization": f"Bearer {created['token']}"},
        )
        assert response.status_code == 202, response.text
        blog_id = response.json()["id"]

        async def counted() -> bool:
            stats = await http.get(f"{counter.url}/authors/{created['author_id']}/stats")
            return stats.status_code == 200 and stats.json()["total_blogs"] == 1

        async def searchable() -> bool:
            found = await http.get(
                f"{indexer.url}/search", params={"author": created["author_id"], "size": 10}
            )
            return [hit["blog_id"] for hit in found.json()["hits"]] == [blog_id]

        async def processed_by_both() -> bool:
            status = (await http.get(f"{publisher.url}/blogs/{blog_id}/status")).json()
            return all(status["groups"][g]["processed"] for g in ("counter", "indexer"))

        async def lagmon_sees_both() -> bool:
            body: dict[str, Any] = (await http.get(f"{lagmon.url}/api/lag")).json()
            seen = {g["group"]: g for g in body.get("groups", [])}
            return all(g in seen and seen[g]["lag"] == 0 for g in ("counter", "indexer"))

        await wait_until(counted, timeout=90, what="counted by the counter (user counter)")
        await wait_until(searchable, timeout=90, what="indexed by the indexer (user indexer)")
        await wait_until(processed_by_both, timeout=60, what="status from the publisher's user")
        await wait_until(lagmon_sees_both, timeout=60, what="both groups in lagmon (user lagmon)")
        lag = (await http.get(f"{lagmon.url}/api/lag")).json()
    print(
        "\npublisher -> counter -> indexer with their own users: counted, searchable, "
        "status processed by both; lagmon: "
        + ", ".join(f"{g['group']} lag {g['lag']} {g['status']}" for g in lag["groups"])
    )
    for process in processes.values():
        assert process.running, process.log_tail()
