"""The counter as a process with JSON logs (COUNTER_LOG_FORMAT=json): every line is one JSON
object, the per-record lines name the record (group, partition, offset, event_id, blog_id and the
trace_id of its traceparent header); a consumer task killed by a fault ends in /healthz 503
while the process keeps serving."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from blog_events import encode_event
from blog_testkit import BlogHistory, ServiceProcess, Stack, free_port, wait_until
from blog_testkit.faults import FAULTY_SERVICE_MODULE, faulty_service_env
from blog_testkit.plugin import create_dead_letter_topics

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_json_lines_name_the_record_and_a_dead_loop_fails_healthz(
    stack: Stack,
    database_url: str,
    topic: str,
    service_processes: Callable[..., ServiceProcess],
) -> None:
    group = f"counter-{topic}"
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [group])
    history = BlogHistory()
    good, poison, fatal = (history.publish(uuid.uuid4()) for _ in range(3))
    port = free_port()
    env = {
        "COUNTER_DATABASE_URL": database_url,
        "COUNTER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "COUNTER_TOPIC": topic,
        "COUNTER_GROUP_ID": group,
        "COUNTER_LOG_FORMAT": "json",
        **faulty_service_env("counter", port, fail_keys=[poison.key], kill_loop_keys=[fatal.key]),
    }
    process = service_processes("counter-json", FAULTY_SERVICE_MODULE, env, port)
    await process.start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        headers = [("traceparent", TRACEPARENT.encode())]
        await producer.send_and_wait(topic, encode_event(good), key=good.key.encode())
        await producer.send_and_wait(topic, b"not an event", key=b"junk", headers=headers)
        await producer.send_and_wait(
            topic, encode_event(poison), key=poison.key.encode(), headers=headers
        )

        async def both_dead_lettered() -> bool:
            return process.log_text().count("dead-lettered to") == 2

        await wait_until(both_dead_lettered, timeout=90, what="two dead letters")
        # Only then: a batch holding the fatal record dies before settling the others.
        await producer.send_and_wait(topic, encode_event(fatal), key=fatal.key.encode())
    finally:
        await producer.stop()

    async with httpx.AsyncClient(base_url=process.url, timeout=5) as http:

        async def dead() -> bool:
            return (await http.get("/healthz")).status_code == 503

        await wait_until(dead, timeout=90, what="/healthz 503 once the loop died")
        body = (await http.get("/healthz")).json()
        assert body["consumer"].startswith("consumer task died: LoopKilled")
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get(f"/authors/{good.payload.author_id}/stats")).status_code == 200

    lines = [json.loads(line) for line in process.log_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= set(line), line
    dead_letters = [line for line in lines if "dead-lettered to" in str(line["message"])]
    assert len(dead_letters) == 2, dead_letters
    (poisoned,) = [line for line in dead_letters if "InjectedFault" in str(line["message"])]
    (undecodable,) = [line for line in dead_letters if line is not poisoned]
    for line in (undecodable, poisoned):
        assert line["group"] == group
        assert line["trace_id"] == TRACE_ID
        assert isinstance(line["partition"], int)
    assert "event_id" not in undecodable
    assert poisoned["event_id"] == str(poison.event_id)
    assert poisoned["blog_id"] == poison.key
    died = [line for line in lines if line["level"] == "CRITICAL" and "died" in line["message"]]
    assert died
    assert "LoopKilled" in died[0]["exception"]
