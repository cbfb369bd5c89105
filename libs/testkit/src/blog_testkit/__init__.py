"""Test support for the blog platform, loaded as the pytest plugin `blog_testkit`.

Fixtures (see `blog_testkit.plugin`): `stack`, `database_url`, `topic`, `es_prefix`,
`service_processes`. Helpers: `wait_until`, `ServiceProcess`, `free_port`.
Kafka (`blog_testkit.kafka`): `produce`, `read_topic`, `topic_partitions`, `end_offsets`,
`committed_offsets`, `commit_offsets`, `group_lag`, `wait_for_zero_lag`, `group_members`,
`running_batch_consumer`.
Events (`blog_testkit.events`): `BlogHistory`, `as_record`, `BLOG_DECODER`.
Faults (`blog_testkit.faults`, `python -m blog_testkit.faults`): a service run with its handler
or app wrapped (crash after a batch, fail for given keys, die before answering).
"""

from blog_testkit.events import BLOG_DECODER, BlogHistory, as_record
from blog_testkit.kafka import (
    commit_offsets,
    committed_offsets,
    end_offsets,
    group_lag,
    group_members,
    produce,
    read_topic,
    running_batch_consumer,
    topic_partitions,
    wait_for_zero_lag,
)
from blog_testkit.processes import ServiceProcess, free_port
from blog_testkit.stack import NO_STACK_MESSAGE, Stack
from blog_testkit.waiting import wait_until

__all__ = [
    "BLOG_DECODER",
    "NO_STACK_MESSAGE",
    "BlogHistory",
    "ServiceProcess",
    "Stack",
    "as_record",
    "commit_offsets",
    "committed_offsets",
    "end_offsets",
    "free_port",
    "group_lag",
    "group_members",
    "produce",
    "read_topic",
    "running_batch_consumer",
    "topic_partitions",
    "wait_for_zero_lag",
    "wait_until",
]
