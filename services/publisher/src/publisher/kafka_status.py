"""Read-only Kafka queries for the status and readiness endpoints, through one admin client per
app, connected lazily (the publisher must start and serve while Kafka is down)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from service_kit.kafka_clients import client_options

log = logging.getLogger(__name__)


class KafkaStatus:
    def __init__(self, bootstrap_servers: str, request_timeout_ms: int) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._request_timeout_ms = request_timeout_ms
        self._client: AIOKafkaAdminClient | None = None
        self._connect_lock = asyncio.Lock()

    async def _admin(self) -> AIOKafkaAdminClient:
        async with self._connect_lock:
            if self._client is None:
                client = AIOKafkaAdminClient(
                    bootstrap_servers=self._bootstrap_servers,
                    request_timeout_ms=self._request_timeout_ms,
                    **client_options(),
                )
                try:
                    await client.start()
                except BaseException:
                    await _close_quietly(client)
                    raise
                self._client = client
            return self._client

    async def _reset(self) -> None:
        # A failed call may leave the client unusable; the next call reconnects.
        async with self._connect_lock:
            client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client)

    async def committed_offset(self, group_id: str, topic: str, partition: int) -> int | None:
        """The group's committed offset (the next offset it will read) on the partition, or None
        when it has committed nothing there."""
        try:
            admin = await self._admin()
            offsets = await admin.list_consumer_group_offsets(
                group_id, partitions=[TopicPartition(topic, partition)]
            )
        except Exception:
            await self._reset()
            raise
        committed = offsets.get(TopicPartition(topic, partition))
        if committed is None or committed.offset < 0:
            return None
        return int(committed.offset)

    async def reachable(self, timeout_s: float) -> bool:
        try:
            admin = await asyncio.wait_for(self._admin(), timeout_s)
            await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        except Exception as exc:
            log.debug("Kafka unreachable: %r", exc)
            await self._reset()
            return False
        return True

    async def close(self) -> None:
        await self._reset()


async def _close_quietly(client: AIOKafkaAdminClient) -> None:
    try:
        await client.close()
    except Exception as exc:
        log.debug("admin client close failed: %r", exc)
