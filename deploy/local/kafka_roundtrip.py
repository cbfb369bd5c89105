"""Readiness probe for `make up` and `stack.sh start kafka[-N]`: the brokers are registered and a
freshly produced message is read back (acks=all).

    kafka_roundtrip.py BOOTSTRAP --nodes N [--node I --node-address HOST:PORT]

Without --node: all N brokers must be live in the cluster's metadata. With --node: that node must
answer on its own address and list itself as a live broker (it rejoined), the others may be down.
Exit 0 when ready, 1 otherwise (the caller retries). It logs in as the stack's `BLOG_KAFKA_*`
variables say (the admin user with KAFKA_AUTH=scram: service_kit.kafka_clients)."""

import argparse
import asyncio
import sys
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from service_kit.kafka_clients import client_options

TOPIC = "_stack_healthcheck"
GROUP = "_stack_healthcheck"


async def live_brokers(bootstrap: str) -> set[int]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=5000, **client_options()
    )
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return {int(broker["node_id"]) for broker in cluster["brokers"]}
    finally:
        await admin.close()


async def ensure_topic(bootstrap: str, nodes: int) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=5000, **client_options()
    )
    await admin.start()
    try:
        # One copy per node up to 3, but a write needs only one of them: the probe must pass
        # while a node of the cluster is down (a restarted node is probed that way).
        topic = NewTopic(
            TOPIC,
            num_partitions=1,
            replication_factor=min(3, nodes),
            topic_configs={"min.insync.replicas": "1"},
        )
        await admin.create_topics([topic])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def round_trip(bootstrap: str, *, commit: bool) -> bool:
    marker = uuid.uuid4().bytes
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000, **client_options()
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait(TOPIC, marker)
    finally:
        await producer.stop()
    # With a group: the first commit creates __consumer_offsets while every node is up (with
    # replication factor 3 it cannot be created with a node missing).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=GROUP if commit else None,
        enable_auto_commit=False,
        **client_options(),
    )
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        batch = await consumer.getmany(tp, timeout_ms=5000)
        found = any(record.value == marker for record in batch.get(tp, []))
        if found and commit:
            await consumer.commit({tp: sent.offset + 1})
        return found
    finally:
        await consumer.stop()


async def probe(args: argparse.Namespace) -> str | None:
    """None when ready, else why not."""
    if args.node is not None:
        seen = await live_brokers(args.node_address)
        if args.node not in seen:
            return f"node {args.node} not live yet (live: {sorted(seen)})"
    else:
        seen = await live_brokers(args.bootstrap)
        if len(seen) < args.nodes:
            return f"{len(seen)} of {args.nodes} brokers live ({sorted(seen)})"
    await ensure_topic(args.bootstrap, args.nodes)
    if not await round_trip(args.bootstrap, commit=args.node is None):
        return "the produced message was not read back"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bootstrap")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--node", type=int)
    parser.add_argument("--node-address")
    args = parser.parse_args()
    try:
        why = asyncio.run(asyncio.wait_for(probe(args), timeout=20))
    except Exception as exc:
        why = f"{exc!r}"
    if why is not None:
        print(f"kafka not ready: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
