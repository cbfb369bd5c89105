"""The native stack's Kafka seen as a cluster, for tests that lose brokers: which node leads what,
which node is the active KRaft controller, which partitions are under-replicated, and stopping,
killing (-9) and starting one node through `deploy/local/stack.sh`."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from blog_testkit.waiting import wait_until
from service_kit.kafka_admin import admin_client

REQUIRE_CLUSTER_ENV = "BLOG_REQUIRE_CLUSTER"
CLUSTER_NODES = 3
NOT_A_CLUSTER = (
    "needs a Kafka cluster of 3 nodes (the stack has {nodes}): "
    "`make down && make test-cluster` (KAFKA_NODES=3)"
)


@dataclass(frozen=True)
class UnderReplicated:
    topic: str
    partition: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class KafkaCluster:
    bootstrap: str
    nodes: int
    stack_script: Path

    async def _stack(self, *args: str, timeout: float = 240.0) -> str:  # noqa: ASYNC109
        process = await asyncio.create_subprocess_exec(
            str(self.stack_script),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
        text = out.decode(errors="replace")
        if process.returncode != 0:
            raise AssertionError(
                f"stack.sh {' '.join(args)} failed ({process.returncode}):\n{text}"
            )
        return text

    async def kill(self, node: int) -> None:
        """SIGKILL: a crashed broker+controller."""
        await self._stack("kill", f"kafka-{node}")

    async def stop(self, node: int) -> None:
        """SIGTERM: a controlled shutdown (leaders move away first)."""
        await self._stack("stop", f"kafka-{node}")

    async def start(self, node: int) -> None:
        """Start it and wait until it is a live broker again."""
        await self._stack("start", f"kafka-{node}")

    async def start_all(self) -> None:
        """Start every node that is not running; wait until all are live brokers."""
        await self._stack("start", "kafka")

    async def live_brokers(self) -> list[int]:
        async with admin_client(self.bootstrap, request_timeout_ms=5000) as admin:
            cluster = await admin.describe_cluster()
        return sorted(int(broker["node_id"]) for broker in cluster["brokers"])

    async def partition_leaders(self, topic: str) -> dict[int, int]:
        """partition -> leader node (-1: none)."""
        async with admin_client(self.bootstrap, request_timeout_ms=5000) as admin:
            [entry] = await admin.describe_topics([topic])
        return {int(p["partition"]): int(p["leader"]) for p in entry["partitions"]}

    async def busiest_leader(self, topic: str) -> int:
        """The node leading the most partitions of `topic`."""
        leaders = Counter((await self.partition_leaders(topic)).values())
        return max(sorted(leaders), key=lambda node: leaders[node])

    async def quorum_leader(self) -> int:
        """The active KRaft controller, as DescribeQuorum reports it (Kafka's metadata-quorum
        tool): in KRaft, a client's metadata names a random broker as "controller"."""
        out = await self._stack("quorum", timeout=60)
        match = re.search(r"^LeaderId:\s+(\d+)", out, re.MULTILINE)
        if match is None:
            raise AssertionError(f"no LeaderId in the quorum description:\n{out}")
        return int(match.group(1))

    async def under_replicated(self) -> list[UnderReplicated]:
        """Every partition of every topic (internal ones included) whose in-sync replicas are
        fewer than its replicas."""
        async with admin_client(self.bootstrap, request_timeout_ms=5000) as admin:
            described = await admin.describe_topics()
        return [
            UnderReplicated(
                entry["topic"],
                int(p["partition"]),
                tuple(p["replicas"]),
                tuple(p["isr"]),
            )
            for entry in described
            for p in entry["partitions"]
            if len(p["isr"]) < len(p["replicas"])
        ]

    async def wait_fully_replicated(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until no partition is under-replicated (a returned node has caught up)."""
        last: list[UnderReplicated] = []

        async def caught_up() -> bool:
            nonlocal last
            last = await self.under_replicated()
            return not last

        try:
            await wait_until(caught_up, timeout=timeout, what="no under-replicated partition")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still under-replicated: {last[:10]}") from None
