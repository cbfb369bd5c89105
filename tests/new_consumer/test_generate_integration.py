"""`make new-consumer` end to end, in a temporary copy of the repository (its git files): the
generator makes services/tagtrends and registers it (the lockfile agrees), the repo's lint passes
on it, its own tests pass against the stack unchanged, and, started as a process on a topic that
already has history, it ends with the full current state and lagmon lists its group with no
configuration (no LAGMON_EXPECTED_GROUPS)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from blog_events import BlogDeleted
from blog_testkit import BlogHistory, ServiceProcess, Stack, produce, wait_for_zero_lag, wait_until
from blog_testkit.plugin import create_dead_letter_topics
from lagmon.app import create_app as create_lagmon
from lagmon.settings import Settings as LagmonSettings
from tests.new_consumer.support import EXAMPLE, REPO, run_generator

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0

ServiceProcessFactory = Callable[..., ServiceProcess]


def copy_repository(destination: Path) -> Path:
    """The files git knows (tracked, and new ones not ignored), plus a link to the pinned tools."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is skipped
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / ".tools").symlink_to(REPO / ".tools")
    return destination


def check(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository with `tagtrends` generated in it."""
    copy = copy_repository(tmp_path_factory.mktemp("repo"))
    result = run_generator(copy, EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert f"created services/{EXAMPLE}" in result.stdout
    again = run_generator(copy, EXAMPLE)
    assert again.returncode == 2
    assert "exists already" in again.stderr
    return copy


def service_env(copy: Path) -> dict[str, str]:
    """This interpreter (the workspace's venv has every dependency) with the new package's src
    on the path, as `uv sync` would install it."""
    return {**os.environ, "PYTHONPATH": str(copy / "services" / EXAMPLE / "src")}


def test_it_is_registered_and_passes_the_repos_lint(generated: Path) -> None:
    pyproject = (generated / "pyproject.toml").read_text(encoding="utf-8")
    assert f"{EXAMPLE} = {{ workspace = true }}" in pyproject
    assert f"services/{EXAMPLE}/src" in pyproject
    check([str(REPO / ".tools" / "bin" / "uv"), "lock", "--check"], generated)
    bin_dir = Path(sys.executable).parent
    check([str(bin_dir / "ruff"), "check", "."], generated)
    check([str(bin_dir / "ruff"), "format", "--check", "."], generated)
    check([str(bin_dir / "mypy"), f"services/{EXAMPLE}"], generated)
    # Its topics file is in the generated KafkaTopics.
    check([sys.executable, "deploy/k8s/generate.py", "--check"], generated)
    topics = (generated / "deploy/k8s/platform/kafka-topics.yaml").read_text(encoding="utf-8")
    assert f"blog-events.{EXAMPLE}.dlq" in topics
    # The AsyncAPI document has the new group (current, and valid by @asyncapi/parser).
    check([sys.executable, "scripts/asyncapi/generate.py", "--check", "--validate"], generated)
    asyncapi = (generated / "docs/asyncapi.yaml").read_text(encoding="utf-8")
    assert f"{EXAMPLE}.receive:" in asyncapi
    assert f"address: blog-events.{EXAMPLE}.dlq" in asyncapi


def test_its_own_tests_pass_against_the_stack(generated: Path, stack: Stack) -> None:
    env = {
        **service_env(generated),
        "BLOG_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "BLOG_POSTGRES_DSN": stack.postgres_dsn,
        "BLOG_ES_URL": stack.es_url,
    }
    output = check(
        [sys.executable, "-m", "pytest", f"services/{EXAMPLE}", "-q", "-p", "no:cacheprovider"],
        generated,
        env,
    )
    summary = output.strip().splitlines()[-1]
    assert re.match(r"\d+ passed in ", summary), summary  # nothing failed, skipped or deselected
    assert int(summary.split()[0]) >= 10


async def lag_groups(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/lag")
    if response.status_code != 200:
        return {}
    return {group["group"]: group for group in response.json()["groups"]}


async def test_started_on_history_it_ends_with_the_state_and_lagmon_lists_it(
    generated: Path,
    stack: Stack,
    database_url: str,
    topic: str,
    service_processes: ServiceProcessFactory,
) -> None:
    group = f"{EXAMPLE}-{topic}"
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [group])
    history = BlogHistory()
    blogs = [history.publish(tags=("kafka", f"tag{n % 4}")) for n in range(40)]
    events = [*blogs, *(history.update(e.payload.blog_id) for e in blogs[:10])]
    events += [history.delete(e.payload.blog_id) for e in blogs[5:15]]
    await produce(stack.kafka_bootstrap, topic, events)
    truth: Counter[str] = Counter()
    for event in history.last.values():
        if not isinstance(event, BlogDeleted):
            truth.update(set(event.tags))

    env = {
        "PYTHONPATH": service_env(generated)["PYTHONPATH"],
        f"{EXAMPLE.upper()}_DATABASE_URL": database_url,
        f"{EXAMPLE.upper()}_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        f"{EXAMPLE.upper()}_TOPIC": topic,
        f"{EXAMPLE.upper()}_GROUP_ID": group,
    }
    service = service_processes(EXAMPLE, EXAMPLE, env)
    lagmon = create_lagmon(
        LagmonSettings(
            kafka_bootstrap_servers=stack.kafka_bootstrap,
            topics=[topic],
            expected_groups=[],
            poll_interval_s=0.5,
        )
    )
    await service.start()
    await wait_for_zero_lag(stack.kafka_bootstrap, group, topic, TIMEOUT_S)
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get("/tags")
        assert response.status_code == 200
        assert {t["tag"]: t["live_blogs"] for t in response.json()} == dict(truth)
        assert truth["kafka"] == 30

    async with (
        lagmon.router.lifespan_context(lagmon),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=lagmon), base_url="http://l") as lc,
    ):

        async def listed_caught_up() -> bool:
            found = (await lag_groups(lc)).get(group)
            return found is not None and found["lag"] == 0 and found["members"] == 1

        await wait_until(listed_caught_up, timeout=TIMEOUT_S, what=f"lagmon lists {group}")
        listed = (await lag_groups(lc))[group]
        assert listed["expected"] is False  # found by itself, not configured
        assert listed["status"] == "OK", listed
    assert await service.terminate() in (0, -15), service.log_tail()
