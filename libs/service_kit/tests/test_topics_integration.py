"""`topics apply` against the real Kafka (one node or the 3-node cluster): creates, grows and
configures what a topics file declares, a second run has nothing to do, and what Kafka cannot do
in place is refused with exit code 2 and nothing applied."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from aiokafka.admin import NewTopic

from blog_testkit import Stack
from service_kit.kafka_admin import admin_client
from service_kit.topics import describe_topic_configs

pytestmark = pytest.mark.integration


async def apply(stack: Stack, path: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service_kit.topics", "apply", "--file", str(path),
        "--bootstrap", stack.kafka_bootstrap, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def topics_file(tmp_path: Path, name: str, partitions: int, retention_ms: int, rf: str) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(
        f"""
topics:
  - name: {name}
    partitions: {partitions}
    replication_factor: {rf}
    config:
      min.insync.replicas: auto
      retention.ms: "{retention_ms}"
""",
        encoding="utf-8",
    )
    return path


async def described(stack: Stack, name: str) -> tuple[int, set[int], dict[str, tuple[str, int]]]:
    """(partitions, replica counts, configs) of the topic."""
    async with admin_client(stack.kafka_bootstrap) as admin:
        [entry] = await admin.describe_topics([name])
        configs = (await describe_topic_configs(admin, [name]))[name]
    partitions = entry["partitions"]
    return len(partitions), {len(p["replicas"]) for p in partitions}, configs


async def live_brokers(stack: Stack) -> int:
    async with admin_client(stack.kafka_bootstrap) as admin:
        return len((await admin.describe_cluster())["brokers"])


async def test_apply_creates_then_has_nothing_to_do(
    stack: Stack, topic: str, tmp_path: Path
) -> None:
    name = f"{topic}.declared"  # deleted with the fixture's topic
    path = topics_file(tmp_path, name, 3, 86_400_000, "auto")
    copies = min(3, await live_brokers(stack))

    code, out, err = await apply(stack, path, "--dry-run")
    assert code == 0, err
    assert f"create      {name}: 3 partitions, replication factor {copies}" in out
    assert "dry run: 1 change(s) planned, nothing applied" in out
    async with admin_client(stack.kafka_bootstrap) as admin:
        assert name not in await admin.list_topics()

    code, out, err = await apply(stack, path)
    assert code == 0, err
    assert "applied 1 change(s)" in out
    partitions, replicas, configs = await described(stack, name)
    assert (partitions, replicas) == (3, {copies})
    assert configs["retention.ms"][0] == "86400000"
    assert configs["min.insync.replicas"][0] == ("2" if copies >= 3 else "1")

    code, out, err = await apply(stack, path)
    assert code == 0, err
    assert f"up to date  {name}: 3 partitions, replication factor {copies}" in out
    assert out.rstrip().endswith("nothing to do")


async def test_apply_raises_partitions_and_sets_configs_keeping_other_ones(
    stack: Stack, topic: str, tmp_path: Path
) -> None:
    name = f"{topic}.grown"
    copies = min(3, await live_brokers(stack))
    # Created by other means, with a config the file does not declare.
    async with admin_client(stack.kafka_bootstrap) as admin:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=3,
                    replication_factor=copies,
                    topic_configs={"segment.ms": "3600000", "retention.ms": "86400000"},
                )
            ]
        )
    path = topics_file(tmp_path, name, 6, 604_800_000, "auto")

    code, out, err = await apply(stack, path)
    assert code == 0, err
    assert f"partitions  {name}: 3 -> 6" in out
    assert "retention.ms: 86400000 -> 604800000" in out
    partitions, replicas, configs = await described(stack, name)
    assert (partitions, replicas) == (6, {copies})
    assert configs["retention.ms"][0] == "604800000"
    # Kafka's AlterConfigs replaces the topic's whole set: the undeclared one must survive.
    assert configs["segment.ms"][0] == "3600000"

    code, out, _ = await apply(stack, path)
    assert code == 0
    assert "nothing to do" in out


async def test_fewer_partitions_or_other_copies_are_refused_with_exit_2(
    stack: Stack, topic: str, tmp_path: Path
) -> None:
    name = f"{topic}.refused"
    copies = min(3, await live_brokers(stack))
    code, _, err = await apply(stack, topics_file(tmp_path, name, 6, 86_400_000, "auto"))
    assert code == 0, err

    code, out, err = await apply(stack, topics_file(tmp_path, name, 3, 3_600_000, "auto"))
    assert code == 2
    assert f"REFUSED     {name}: declares 3 partitions but has 6" in out
    assert "nothing applied: 1 change(s) refused" in err

    other = copies - 1 if copies > 1 else 2
    code, out, err = await apply(stack, topics_file(tmp_path, name, 6, 3_600_000, str(other)))
    assert code == 2
    assert f"declares replication factor {other} but has {copies}" in out

    # Nothing was applied: not even the retention change that came with the refused plans.
    partitions, replicas, configs = await described(stack, name)
    assert (partitions, replicas) == (6, {copies})
    assert configs["retention.ms"][0] == "86400000"


async def test_a_bad_file_is_refused_before_kafka_is_asked(tmp_path: Path, stack: Stack) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  - name: x\n    partitions: -1\n", encoding="utf-8")
    code, _, err = await apply(stack, path)
    assert code == 2
    assert "topics.0.partitions" in err
