"""What the resilience tests share: committed offsets per partition, service metrics, the
publisher's database, and stopping one server of the shared stack (always started again)."""

from __future__ import annotations

import asyncio
import importlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka.structs import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from blog_testkit import ServiceProcess, committed_offsets, group_lag, group_members, read_topic
from tests.pipeline import Author, Pipeline

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack.sh"
# `stack.sh start` waits for readiness itself (its own STACK_START_TIMEOUT); this only bounds it.
SERVER_START_TIMEOUT_S = 240.0


async def post_blog(pipeline: Pipeline, author: Author, title: str) -> httpx.Response:
    return await pipeline.http.post(
        f"{pipeline.publisher.url}/blogs",
        json={"title": title, "body": f"The body of {title}.", "tags": ["resilience"]},
        headers=author.headers,
    )


async def post_accepted(pipeline: Pipeline, author: Author, title: str) -> str:
    """POST a blog that must be accepted; its id."""
    response = await post_blog(pipeline, author, title)
    assert response.status_code == 202, response.text
    blog_id: str = response.json()["id"]
    return blog_id


async def committed_by_partition(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """partition -> committed offset of `group` on `topic` (partitions never committed: absent)."""
    committed = await committed_offsets(bootstrap, group)
    return {tp.partition: offset for tp, offset in committed.items() if tp.topic == topic}


async def fully_committed(bootstrap: str, group: str, topic: str) -> bool:
    """Whether `group` has committed every record of `topic` written so far."""
    return await group_lag(bootstrap, group, topic) == 0


def dlq_header(record: ConsumerRecord[bytes, bytes], name: str) -> str:
    values = [value for key, value in record.headers if key == name]
    assert len(values) == 1, f"header {name} on {record.topic}[{record.partition}]@{record.offset}"
    return bytes(values[0]).decode()


async def metric(http: httpx.AsyncClient, url: str, sample: str, **labels: str) -> float:
    """The value of one Prometheus sample from a service's /metrics (0 when absent)."""
    response = await http.get(f"{url}/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


@dataclass(frozen=True)
class RetryLine:
    attempt: int
    delay_s: float


RETRY_LINE = re.compile(r"failed \(attempt (\d+)(?::[^\n]*?)?\), retrying in ([0-9.]+)s")


def retry_lines(log_text: str) -> list[RetryLine]:
    """The batch consumer's "failed (attempt n), retrying in d s" lines, in order."""
    return [RetryLine(int(match[1]), float(match[2])) for match in RETRY_LINE.finditer(log_text)]


async def publisher_rows(database_url: str, author_id: str) -> dict[str, list[int]]:
    """title -> versions of the BlogPublished outbox rows of the author's blogs (one expected)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT b.title, o.version FROM publisher.blogs b"
            " LEFT JOIN publisher.outbox o ON o.blog_id = b.id AND o.version = 1"
            " WHERE b.author_id = $1",
            uuid.UUID(author_id),
        )
    finally:
        await connection.close()
    found: dict[str, list[int]] = {}
    for row in rows:
        versions = found.setdefault(row["title"], [])
        if row["version"] is not None:
            versions.append(row["version"])
    return found


async def unsent_outbox_rows(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM publisher.outbox WHERE sent_at IS NULL"
        )
    finally:
        await connection.close()
    return count


async def stack_command(action: str, server: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(STACK_SCRIPT),
        action,
        server,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), SERVER_START_TIMEOUT_S)
    assert process.returncode == 0, f"stack.sh {action} {server} failed:\n{out.decode()}"


class ServerOutage:
    """`begin()` stops a server of the shared stack (kafka, postgres, elasticsearch), `end()`
    starts it again and waits until it is ready; call `end()` in a `finally` too (it is a no-op
    the second time): other tests share the server."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.stopped = False

    async def begin(self) -> None:
        self.stopped = True
        await stack_command("stop", self.server)

    async def end(self) -> None:
        if self.stopped:
            self.stopped = False
            await stack_command("start", self.server)


async def member_count(bootstrap: str, group: str) -> int:
    """How many members the consumer group has right now (0 once every member left)."""
    return len((await group_members(bootstrap, group))["members"])


def settings_of(service: ServiceProcess) -> Any:
    """The service's own settings, built from the environment the test gave its process (so
    derived names, like the dead-letter topic, come from the service, not from the test)."""
    name = service.env.get("BLOG_FAULTY_SERVICE", service.module)
    module = importlib.import_module(f"{name}.settings")
    settings_class = getattr(module, "Settings", None) or module.IndexerSettings
    prefix = f"{name.upper()}_"
    fields = {
        key.removeprefix(prefix).lower(): value
        for key, value in service.env.items()
        if key.startswith(prefix)
    }
    return settings_class(**fields)


def dlq_topic_of(service: ServiceProcess) -> str:
    topic: str = settings_of(service).dlq_topic
    return topic


async def dead_letters_of(
    bootstrap: str, service: ServiceProcess
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records the service's consumer group dead-lettered (its DLQ may be shared)."""
    group = settings_of(service).group_id
    return [
        record
        for record in await read_topic(bootstrap, dlq_topic_of(service))
        if dict(record.headers).get("dlq-group") == group.encode()
    ]


async def committed_past(
    bootstrap: str, group: str, topic: str, partition: int, offset: int
) -> bool:
    """Whether `group` has committed beyond `offset` on the partition."""
    committed = await committed_by_partition(bootstrap, group, topic)
    return committed.get(partition, 0) > offset
