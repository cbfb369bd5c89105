"""The rebalance listener: a revoke waits for the batch in hand (processed and committed) before
the partitions go to another member."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka import ConsumerRebalanceListener, TopicPartition

log = logging.getLogger(__name__)


def describe_partitions(partitions: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)


class BatchLockListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self, group_id: str, on_revoke: Callable[[set[TopicPartition]], Awaitable[None]]
    ) -> None:
        self._group_id = group_id
        self._on_revoke = on_revoke

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("group %s assigned %s", self._group_id, describe_partitions(assigned))
