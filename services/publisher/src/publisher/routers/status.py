"""`GET /blogs/{id}/status`: has the blog's event reached Kafka, and which consumer groups have
applied it (their committed offset is beyond it)? Read-your-write without touching the other
services' data."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from publisher.dependencies import Runtime, RuntimeDep
from publisher.errors import error_responses
from publisher.models import BlogStatus, EventPosition, GroupProgress
from service_kit.problems import ProblemError

log = logging.getLogger(__name__)

router = APIRouter(tags=["status"])


@router.get(
    "/blogs/{blog_id}/status", response_model=BlogStatus, responses=error_responses(404, 503)
)
async def blog_status(
    blog_id: uuid.UUID,
    rt: RuntimeDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> BlogStatus:
    """Where the blog's event (latest version, or `version`) is: relayed to Kafka yet, and
    which consumer groups have processed it (committed offset beyond it)."""
    blog = await rt.store.get(blog_id, include_deleted=True)
    if blog is None or (version is not None and version > blog.version):
        raise ProblemError(404, "blog version not found")
    wanted = version or blog.version
    position = await rt.store.event_position(blog_id, wanted)
    groups: dict[str, GroupProgress] = {}
    for group in rt.settings.status_groups:
        groups[group] = await group_progress(rt, group, position)
    return BlogStatus(
        blog_id=blog_id,
        version=wanted,
        event=EventPosition(partition=position[0], offset=position[1]) if position else None,
        groups=groups,
    )


async def group_progress(
    rt: Runtime, group: str, position: tuple[int, int] | None
) -> GroupProgress:
    if position is None:
        return GroupProgress(processed=False, committed_offset=None)
    partition, offset = position
    try:
        committed = await rt.kafka.committed_offset(group, rt.settings.topic, partition)
    except Exception as exc:
        log.warning("cannot read offsets of group %s: %r", group, exc)
        return GroupProgress(processed=False, committed_offset=None, error="kafka unreachable")
    # A committed offset is the next one the group will read.
    return GroupProgress(
        processed=committed is not None and committed > offset, committed_offset=committed
    )
