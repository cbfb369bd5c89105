"""Read-only questions to Kafka's admin API that services ask at start-up and when something
fails: do my topics exist (services never create them: each team applies its topics file), and
why does a produce not go through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from service_kit.kafka_clients import client_options

log = logging.getLogger(__name__)

T = TypeVar("T")

NO_ERROR = 0
UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION


@contextlib.asynccontextmanager
async def admin_client(
    bootstrap: str, *, request_timeout_ms: int = 10_000, client_id: str = "service-kit-admin"
) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=request_timeout_ms,
        client_id=client_id,
        **client_options(),
    )
    try:
        await admin.start()
        yield admin
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def _led(entry: Mapping[str, Any]) -> bool:
    partitions = entry["partitions"]
    return bool(partitions) and all(
        p["error_code"] == NO_ERROR and p["leader"] >= 0 for p in partitions
    )


async def unusable_topics(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, str]:
    """topic -> why it cannot be used yet ("does not exist", "partitions without a leader"),
    for those of `names` that cannot; empty when all can."""
    described = {entry["topic"]: entry for entry in await admin.describe_topics(list(names))}
    problems: dict[str, str] = {}
    for name in names:
        entry = described.get(name)
        if entry is None or entry["error_code"] == UNKNOWN_TOPIC:
            problems[name] = "does not exist"
        elif entry["error_code"] != NO_ERROR:
            problems[name] = f"error code {entry['error_code']}"
        elif not _led(entry):
            problems[name] = "has partitions without a leader"
    return problems


async def wait_for_topics(
    bootstrap: str,
    names: Sequence[str],
    *,
    on_change: Callable[[str | None], None],
    interval_s: float = 2.0,
    request_timeout_ms: int = 10_000,
) -> None:
    """Return once every topic in `names` exists with a leader for each partition. Until then,
    `on_change(why)` is called each time the reason changes (so callers log it once, not per
    poll), and `on_change(None)` once at the end."""
    reason: str | None = None

    def report(why: str | None) -> None:
        nonlocal reason
        if why != reason:
            reason = why
            on_change(why)

    while True:
        try:
            async with admin_client(bootstrap, request_timeout_ms=request_timeout_ms) as admin:
                while True:
                    problems = await unusable_topics(admin, names)
                    if not problems:
                        report(None)
                        return
                    report(
                        "; ".join(f"topic {name} {why}" for name, why in sorted(problems.items()))
                    )
                    await asyncio.sleep(interval_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            report(f"Kafka at {bootstrap} unreachable ({type(exc).__name__})")
            await asyncio.sleep(interval_s)


async def wait_until_led(
    admin: AIOKafkaAdminClient, topics: Mapping[str, int], timeout_s: float
) -> None:
    """Wait until each topic has (at least) its number of partitions, each with a leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = {e["topic"]: e for e in await admin.describe_topics(list(topics))}
        pending = [
            name
            for name, count in topics.items()
            if name not in described
            or described[name]["error_code"] != NO_ERROR
            or len(described[name]["partitions"]) < count
            or not _led(described[name])
        ]
        if not pending:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"topics without partition leaders after {timeout_s:g}s: {pending}")
        await asyncio.sleep(0.2)


async def produce_blockers(
    bootstrap: str, topic: str, *, request_timeout_ms: int = 5_000, attempts: int = 8
) -> str:
    """Why acks=all writes to `topic` may fail right now, in words for a log line: brokers down,
    partitions without a leader, or with fewer in-sync replicas than min.insync.replicas (Kafka
    then answers NOT_ENOUGH_REPLICAS). Empty when the topic looks writable."""

    async def asked(question: Callable[[], Awaitable[T]]) -> T:
        # The admin client sends each request to a random known broker, which may be the one
        # that just died (refused at once): ask again.
        for attempt in range(1, attempts + 1):
            try:
                return await question()
            except KafkaError:
                if attempt == attempts:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    async with admin_client(bootstrap, request_timeout_ms=request_timeout_ms) as admin:
        cluster = await asked(admin.describe_cluster)
        [entry] = await asked(lambda: admin.describe_topics([topic]))
        if entry["error_code"] == UNKNOWN_TOPIC:
            return f"topic {topic} does not exist"
        [response] = await asked(
            lambda: admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})]
            )
        )
    min_insync = 1
    for resource in response.to_object()["resources"]:
        for config in resource["config_entries"]:
            if config["config_names"] == "min.insync.replicas" and config["config_value"]:
                min_insync = int(config["config_value"])
    partitions = entry["partitions"]
    leaderless = sorted(p["partition"] for p in partitions if p["leader"] < 0)
    short = sorted(
        p["partition"] for p in partitions if p["leader"] >= 0 and len(p["isr"]) < min_insync
    )
    brokers = sorted(int(b["node_id"]) for b in cluster["brokers"])
    replicas = sorted({r for p in partitions for r in p["replicas"]})
    down = [r for r in replicas if r not in brokers]
    parts = []
    if down:
        parts.append(f"broker(s) {down} down (live: {brokers})")
    if leaderless:
        parts.append(f"partitions {leaderless} of {topic} have no leader")
    if short:
        parts.append(
            f"partitions {short} of {topic} have fewer in-sync replicas than "
            f"min.insync.replicas={min_insync}: Kafka refuses acks=all writes "
            "(NOT_ENOUGH_REPLICAS) until enough brokers are back"
        )
    return "; ".join(parts)
