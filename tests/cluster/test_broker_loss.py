"""Broker loss under load on the 3-node cluster (marker `cluster`; `make test-cluster`).

Two publishers, two counters and two indexers run as processes while writes keep coming through
both publishers. Each scenario loses brokers, then checks what the chaos run checks: every
accepted write counted and indexed exactly once (at its latest version), no write answered 5xx,
and, once the nodes are back, no partition under-replicated. The failover gaps (kill -> the
relay's next successful send, -> each group's next commit) are printed and kept in
test-artifacts/cluster-failover.json. The scenarios share one fleet, in this order."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.errors import NotEnoughReplicasError

from blog_testkit import Stack, wait_until
from blog_testkit.cluster import KafkaCluster
from service_kit.kafka_admin import admin_client

from .fleet import Fleet, Timeline, cluster_fleet, record_figures, running_load

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

RECOVERY_TIMEOUT_S = 180.0
REPLICATION_TIMEOUT_S = 180.0


@pytest_asyncio.fixture(scope="module")
async def fleet(stack: Stack, kafka_cluster: KafkaCluster) -> AsyncIterator[Fleet]:
    async with cluster_fleet(stack) as running:
        yield running


@pytest_asyncio.fixture(autouse=True)
async def all_nodes_back(kafka_cluster: KafkaCluster) -> AsyncIterator[None]:
    """Every scenario starts and ends with all three nodes up (even after a failure)."""
    await kafka_cluster.start_all()
    yield
    await kafka_cluster.start_all()


async def hold(seconds: float) -> None:
    """Let the fault last (the scenario's schedule, not a wait for an outcome)."""
    await asyncio.sleep(seconds)


async def wait_recovered(fleet: Fleet, timeline: Timeline) -> float:
    """Until writes made after the fault reach Kafka and both groups commit after that; returns
    the time it was seen."""

    async def relayed_after_fault() -> bool:
        sent: int = await fleet.db.fetchval(
            "SELECT count(*) FROM publisher.outbox WHERE sent_at IS NOT NULL"
            " AND created_at > to_timestamp($1) + interval '1 second'",
            timeline.fault_at,
        )
        return sent >= 10

    await wait_until(
        relayed_after_fault, timeout=RECOVERY_TIMEOUT_S, what="writes relayed after the fault"
    )
    relayed = time.time()

    async def committed_since() -> bool:
        return all(any(t > relayed for t in timeline.commits[g]) for g in fleet.groups)

    await wait_until(committed_since, timeout=RECOVERY_TIMEOUT_S, what="both groups commit again")
    return time.time()


async def lose_a_node(
    fleet: Fleet, kafka_cluster: KafkaCluster, node: int, scenario: str, rootpath: Path
) -> None:
    """kill -9 `node` under load, measure the gaps, bring it back, check everything."""
    async with running_load(fleet), Timeline(fleet) as timeline:
        await fleet.wait_flowing()
        timeline.fault()
        await kafka_cluster.kill(node)
        recovered = await wait_recovered(fleet, timeline)
        figures = await timeline.figures(until=recovered)
        # A while longer with the node down, then it returns and catches up.
        await fleet.wait_flowing()
        await kafka_cluster.start(node)
        await kafka_cluster.wait_fully_replicated(REPLICATION_TIMEOUT_S)
        await fleet.wait_flowing()
    converged = await fleet.converge_and_check()
    record_figures(
        rootpath,
        scenario,
        {"node": node, **figures, "converged_after_load_s": converged},
    )
    assert await kafka_cluster.under_replicated() == []


async def test_killing_the_broker_that_leads_most_partitions(
    fleet: Fleet, kafka_cluster: KafkaCluster, pytestconfig: pytest.Config
) -> None:
    victim = await kafka_cluster.busiest_leader(fleet.topic)
    await lose_a_node(fleet, kafka_cluster, victim, "kill -9 busiest leader", pytestconfig.rootpath)


async def test_killing_the_active_controller(
    fleet: Fleet, kafka_cluster: KafkaCluster, pytestconfig: pytest.Config
) -> None:
    controller = await kafka_cluster.quorum_leader()
    await lose_a_node(
        fleet, kafka_cluster, controller, "kill -9 active controller", pytestconfig.rootpath
    )
    # A new controller was elected among the two others while it was down (the quorum held).
    assert await kafka_cluster.quorum_leader() in range(1, kafka_cluster.nodes + 1)


async def run_module(module: str, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """`python -m module args`: (exit code, stdout). Its stderr (logs, e.g. aiokafka's
    "Unable connect" to a node of the list that is down) is kept out of the output and added to
    it only when the command fails."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 120)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        pytest.fail(
            f"python -m {module} {' '.join(args)} did not finish in 120 s; its stderr:\n"
            + err.decode(errors="replace")[-4000:]
        )
    assert process.returncode is not None
    text = out.decode(errors="replace")
    if process.returncode != 0:
        text += "\n" + err.decode(errors="replace")
    return process.returncode, text


async def test_one_node_down_for_a_minute_writes_keep_flowing(
    fleet: Fleet, kafka_cluster: KafkaCluster
) -> None:
    # Node 1 is the first address of every client's bootstrap list.
    kafka = fleet.stack.kafka_bootstrap
    async with running_load(fleet):
        await fleet.wait_flowing()
        await kafka_cluster.kill(1)
        down_at = time.monotonic()
        # Failover first, then the pipeline must keep moving for the rest of the minute.
        await fleet.wait_flowing(timeout=RECOVERY_TIMEOUT_S)

        # Every client starts and works with the first node of its list down.
        code, out = await run_module("publisher", "topics", "apply", "--dry-run", env={})
        assert code == 0, out
        assert "(2 live broker(s))" in out
        lagmon_env = {
            "LAGMON_KAFKA_BOOTSTRAP_SERVERS": kafka,
            "LAGMON_TOPICS": json.dumps([fleet.topic]),
        }
        code, out = await run_module(
            "lagmon", "status", "--json", "--interval", "0.5", env=lagmon_env
        )
        assert code == 0, out
        seen = {group["group"] for group in json.loads(out)["groups"]}
        assert set(fleet.groups) <= seen, out
        for group in fleet.groups:
            code, out = await run_module(
                "service_kit.redrive", "--bootstrap", kafka, "--topic", fleet.topic,
                "--consumer-group", group, "--dry-run", env={},
            )  # fmt: skip
            assert code == 0, out
        restarted = fleet.counters[0]
        await restarted.terminate()
        await restarted.start(timeout=120)

        async def ready() -> bool:
            return (await fleet.http.get(f"{restarted.url}/readyz")).status_code == 200

        await wait_until(ready, timeout=RECOVERY_TIMEOUT_S, what="restarted counter ready")

        while time.monotonic() - down_at < 60:
            await fleet.wait_flowing(writes=20, timeout=60)
        await kafka_cluster.start(1)
        await kafka_cluster.wait_fully_replicated(REPLICATION_TIMEOUT_S)
        await fleet.wait_flowing()
    await fleet.converge_and_check()
    assert await kafka_cluster.under_replicated() == []


async def test_two_nodes_down_the_outbox_holds_the_writes_until_they_return(
    fleet: Fleet, kafka_cluster: KafkaCluster, pytestconfig: pytest.Config
) -> None:
    async with running_load(fleet):
        await fleet.wait_flowing()
        # One after the other, each a controlled shutdown: the last in-sync copy left is
        # node 1's, below min.insync.replicas=2.
        await kafka_cluster.stop(3)
        await kafka_cluster.stop(2)
        stopped_at = time.monotonic()

        # A write needing 2 in-sync copies is refused by Kafka...
        producer = AIOKafkaProducer(
            bootstrap_servers=fleet.stack.kafka_bootstrap, acks="all", request_timeout_ms=5000
        )
        await producer.start()
        try:
            with pytest.raises(NotEnoughReplicasError):
                await producer.send_and_wait(fleet.topic, b"probe", key=b"probe")
        finally:
            await producer.stop()

        # ...while POSTs are still accepted (202) and wait in the outbox.
        accepted = fleet.report.requests_accepted

        async def outbox_holds() -> bool:
            unsent, oldest = await fleet.unsent()
            return unsent >= 20 and oldest >= 10 and fleet.report.requests_accepted > accepted

        await wait_until(outbox_holds, timeout=RECOVERY_TIMEOUT_S, what="writes held in outbox")

        async def relay_says_why() -> bool:
            return any(
                "outbox relay: waiting:" in line and "NOT_ENOUGH_REPLICAS" in line
                for publisher in fleet.publishers
                for line in publisher.log_text().splitlines()
            )

        await wait_until(relay_says_why, timeout=60, what="the relay logs why it waits")
        held, oldest = await fleet.unsent()
        await kafka_cluster.start_all()
        await kafka_cluster.wait_fully_replicated(REPLICATION_TIMEOUT_S)
        await fleet.wait_flowing()
    converged = await fleet.converge_and_check()
    record_figures(
        pytestconfig.rootpath,
        "two nodes down",
        {
            "down_s": round(time.monotonic() - stopped_at, 1),
            "held_in_outbox": held,
            "oldest_held_s": round(oldest, 1),
            "converged_after_load_s": converged,
        },
    )
    assert await kafka_cluster.under_replicated() == []


async def test_a_rolling_restart_of_all_three_nodes(
    fleet: Fleet, kafka_cluster: KafkaCluster
) -> None:
    async with running_load(fleet):
        await fleet.wait_flowing()
        for node in range(1, kafka_cluster.nodes + 1):
            # As an upgrade does: one node at a time, the next once all copies are in sync.
            await kafka_cluster.stop(node)
            await fleet.wait_flowing(writes=10, timeout=RECOVERY_TIMEOUT_S)
            await kafka_cluster.start(node)
            await kafka_cluster.wait_fully_replicated(REPLICATION_TIMEOUT_S)
        await fleet.wait_flowing()
    await fleet.converge_and_check()
    assert await kafka_cluster.under_replicated() == []


async def test_raising_partitions_while_consuming(
    fleet: Fleet, kafka_cluster: KafkaCluster, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    topics_file = tmp_path / "topics.yaml"
    topics_file.write_text(
        f"topics:\n  - name: {fleet.topic}\n    partitions: 12\n    replication_factor: auto\n"
        "    config:\n      min.insync.replicas: auto\n",
        encoding="utf-8",
    )
    async with running_load(fleet):
        await fleet.wait_flowing()
        code, out = await run_module(
            "publisher", "topics", "apply", "--file", str(topics_file), env={}
        )
        assert code == 0, out
        assert f"partitions  {fleet.topic}: 6 -> 12" in out
        applied = time.monotonic()

        # The relay's producer and both groups find the new partitions at their next metadata
        # refresh (30 s by default).
        async def relay_uses_new_partitions() -> bool:
            found: bool = await fleet.db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM publisher.outbox WHERE kafka_partition >= 6)"
            )
            return found

        await wait_until(relay_uses_new_partitions, timeout=120, what="sends to partitions 6-11")
        relay_found_s = round(time.monotonic() - applied, 1)

        async def committed_on_new_partitions() -> bool:
            for group in fleet.groups:
                async with admin_client(fleet.stack.kafka_bootstrap) as admin:
                    offsets = await admin.list_consumer_group_offsets(group)
                if not any(tp.partition >= 6 and meta.offset > 0 for tp, meta in offsets.items()):
                    return False
            return True

        await wait_until(committed_on_new_partitions, timeout=120, what="commits on 6-11")
        groups_found_s = round(time.monotonic() - applied, 1)
        await fleet.wait_flowing()
    await fleet.converge_and_check()

    # The lag monitor shows all twelve partitions for both groups.
    code, out = await run_module(
        "lagmon", "status", "--json", "--interval", "0.5",
        env={
            "LAGMON_KAFKA_BOOTSTRAP_SERVERS": fleet.stack.kafka_bootstrap,
            "LAGMON_TOPICS": json.dumps([fleet.topic]),
        },
    )  # fmt: skip
    assert code == 0, out
    groups = {group["group"]: group for group in json.loads(out)["groups"]}
    for group in fleet.groups:
        partitions = {p["partition"] for p in groups[group]["partitions"]}
        assert partitions == set(range(12)), (group, sorted(partitions))
        assert groups[group]["lag"] == 0
    record_figures(
        pytestconfig.rootpath,
        "partitions 6 -> 12",
        {"relay_first_send_to_new_s": relay_found_s, "groups_commit_on_new_s": groups_found_s},
    )
