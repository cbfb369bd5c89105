"""Readiness probe for `make up`: a real produce/consume round trip through the broker.

Exit 0 when a freshly produced message was read back, 1 otherwise (the caller retries)."""

import asyncio
import sys
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

TOPIC = "_stack_healthcheck"


async def round_trip(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    marker = uuid.uuid4().bytes
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000)
    await producer.start()
    try:
        sent = await producer.send_and_wait(TOPIC, marker)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(TOPIC, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        batch = await consumer.getmany(tp, timeout_ms=5000)
        return any(record.value == marker for record in batch.get(tp, []))
    finally:
        await consumer.stop()


def main() -> int:
    try:
        ok = asyncio.run(asyncio.wait_for(round_trip(sys.argv[1]), timeout=15))
    except Exception as exc:
        print(f"kafka not ready: {exc!r}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
