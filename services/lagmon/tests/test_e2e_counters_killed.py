"""From `kill -9` of every counter instance to the ConsumerGroupStopped page, measured.

Two counter processes consume a topic while events keep arriving; lagmon runs as a process with
its production settings (a sample every 5 s, STOP after 2 samples). Both counters are killed with
SIGKILL at once. The test measures when lagmon says STOP, then replays what lagmon said as the
`lagmon_group_status` series a Prometheus scraping every 15 s (from the kill on) would hold, and
runs promtool on the real alert rules over it: ConsumerGroupStopped fires at the evaluation the
rule's `for:` allows and not one earlier. The figures: test-artifacts/consumer-stopped-page.txt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from blog_testkit import BlogHistory, ServiceProcess, Stack, processes, produce, wait_until
from blog_testkit.plugin import create_dead_letter_topics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
ALERT_RULES = REPO / "deploy" / "prometheus" / "lagmon-alerts.yml"
PROMTOOL = REPO / ".tools" / "bin" / "promtool"
SCRAPE_S = 15  # the scrape and evaluation interval the rules are written for
POLL_S = 5.0  # lagmon's default sampling interval
COUNTERS = 2


def stopped_rule() -> dict[str, Any]:
    document = yaml.safe_load(ALERT_RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    rule: dict[str, Any] = next(r for r in rules if r.get("alert") == "ConsumerGroupStopped")
    return rule


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]]


def status_at(timeline: list[tuple[float, int]], at: float) -> int:
    """lagmon's group status code as of `at`: that of the latest sample taken by then."""
    code = timeline[0][1]
    for sampled_at, status in timeline:
        if sampled_at > at:
            break
        code = status
    return code


def promtool_test(group: str, values: list[int], fires_at_s: int) -> str:
    """A promtool test: the replayed series, the alert firing at `fires_at_s`, not 15 s before."""
    labels = {"group": group, "severity": "critical"}
    rule = stopped_rule()
    annotations = {
        key: text.replace("{{ $labels.group }}", group) for key, text in rule["annotations"].items()
    }
    document = {
        "rule_files": [str(ALERT_RULES)],
        "evaluation_interval": f"{SCRAPE_S}s",
        "tests": [
            {
                "interval": f"{SCRAPE_S}s",
                "input_series": [
                    {
                        "series": f'lagmon_group_status{{job="lagmon",group="{group}"}}',
                        "values": " ".join(str(v) for v in values),
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": f"{fires_at_s - SCRAPE_S}s",
                        "alertname": "ConsumerGroupStopped",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": f"{fires_at_s}s",
                        "alertname": "ConsumerGroupStopped",
                        "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
                    },
                ],
            }
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


async def test_kill_9_of_every_counter_to_consumer_group_stopped(
    stack: Stack,
    topic: str,
    database_url: str,
    service_processes: Callable[..., ServiceProcess],
) -> None:
    group = f"{topic}-counter"
    counter_env = {
        "COUNTER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "COUNTER_TOPIC": topic,
        "COUNTER_DATABASE_URL": database_url,
        "COUNTER_GROUP_ID": group,
    }
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [group])
    counters = [
        service_processes(f"killed-counter-{n}", "counter", counter_env) for n in range(COUNTERS)
    ]
    lagmon = service_processes(
        "lagmon-page-time",
        "lagmon",
        {
            "LAGMON_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "LAGMON_TOPICS": json.dumps([topic]),
            "LAGMON_EXPECTED_GROUPS": group,
            "LAGMON_POLL_INTERVAL_S": str(POLL_S),
        },
    )
    lagmon.env["LAGMON_PORT"] = str(lagmon.port)
    for counter in counters:  # one after the other: each applies the migrations at start-up
        await counter.start()
    await lagmon.start()
    history = BlogHistory()
    await produce(stack.kafka_bootstrap, topic, [history.publish() for _ in range(20)])

    async with httpx.AsyncClient(base_url=lagmon.url, timeout=10) as client:

        async def group_now() -> dict[str, Any] | None:
            body = (await client.get("/api/lag")).json()
            found: dict[str, Any] | None = next(
                (g for g in body.get("groups", []) if g["group"] == group), None
            )
            return found

        async def consuming() -> bool:
            seen = await group_now()
            return bool(
                seen and seen["status"] == "OK" and seen["lag"] == 0 and seen["members"] == COUNTERS
            )

        await wait_until(consuming, timeout=90, interval=0.5, what=f"{COUNTERS} counters, lag 0")

        async def keep_posting() -> None:
            # Work keeps arriving: the dead group's lag grows (load, not synchronisation).
            while True:
                await produce(stack.kafka_bootstrap, topic, [history.publish()])
                await asyncio.sleep(0.5)

        poster = asyncio.create_task(keep_posting())
        try:
            killed_at = time.time()
            for counter in counters:
                counter.kill()
            for counter in counters:
                assert await counter.wait_exit(10) == -9

            timeline: list[tuple[float, int]] = []  # (sample time, status code), from lagmon
            facts: list[tuple[float, str, str, int | None]] = []

            async def stopped_for_three_samples() -> bool:
                body = (await client.get("/api/lag")).json()
                seen = next(g for g in body["groups"] if g["group"] == group)
                if not timeline or body["at"] > timeline[-1][0]:
                    code = {"OK": 0, "WARN": 1, "REWIND": 2, "STALL": 3, "STOP": 4}.get(
                        seen["status"], 6
                    )
                    timeline.append((body["at"], code))
                    facts.append((body["at"], seen["status"], seen["state"], seen["members"]))
                stops = [at for at, code in timeline if code == 4]
                return len(stops) >= 3

            await wait_until(
                stopped_for_three_samples, timeout=120, interval=0.25, what=f"{group} STOP"
            )
        finally:
            poster.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poster

    first_empty = next(at for at, _, state, _ in facts if state == "Empty")
    first_stop = next(at for at, code in timeline if code == 4)
    kill_to_empty, kill_to_stop = first_empty - killed_at, first_stop - killed_at
    # Kafka notices the dead members after the consumers' session timeout (aiokafka: 10 s);
    # then two samples. Generous slack: a loaded machine.
    assert kill_to_stop < 10 + 2 * POLL_S + 30, facts
    # Never STALL on the way: no member is not "stuck consumers".
    assert all(status in {"OK", "WARN", "STOP"} for _, status, _, _ in facts), facts

    # What Prometheus would hold, scraping every 15 s from the kill on (STOP persists while no
    # member and lag > 0: the test saw it hold for 3 samples, the rules keep it).
    rule_for = seconds(stopped_rule()["for"])
    steps = (int(kill_to_stop) // SCRAPE_S) + rule_for // SCRAPE_S + 4
    values = [status_at(timeline, killed_at + k * SCRAPE_S) for k in range(steps)]
    first_step = next(k for k, v in enumerate(values) if v == 4)
    fires_at = first_step * SCRAPE_S + rule_for
    promtool = str(PROMTOOL) if PROMTOOL.exists() else shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI (scripts/ensure-promtool.sh)")
        pytest.skip("promtool missing: scripts/ensure-promtool.sh installs it")
    test_file = processes.artifacts_dir / "consumer-stopped-page.test.yml"
    test_file.parent.mkdir(parents=True, exist_ok=True)
    test_file.write_text(promtool_test(group, values, fires_at))
    process = await asyncio.create_subprocess_exec(
        promtool, "test", "rules", str(test_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(process.communicate(), 120))[0].decode()
    assert process.returncode == 0, output

    report = "\n".join(
        [
            f"kill -9 of {COUNTERS} counter instances at {killed_at:.3f}",
            f"lagmon samples (every {POLL_S:g} s) after the kill: "
            + ", ".join(f"+{at - killed_at:.1f}s {s} {st} {m}" for at, s, st, m in facts),
            f"kill -> group Empty (seen by lagmon): {kill_to_empty:.1f} s",
            f"kill -> lagmon STOP:                  {kill_to_stop:.1f} s",
            f"scrapes every {SCRAPE_S} s from the kill: lagmon_group_status = {values}",
            f"kill -> ConsumerGroupStopped firing (promtool, for: {rule_for}s): {fires_at} s",
            f"promtool: {output.strip()}",
        ]
    )
    (processes.artifacts_dir / "consumer-stopped-page.txt").write_text(report + "\n")
    print(report)  # shown with `pytest -s`
