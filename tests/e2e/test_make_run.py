"""`make run` and Ctrl-C: the services stop, the stack they run on stays up.

The servers are stopped first so that `make run` itself starts them (the case where they used to
share the terminal's process group and die with the Ctrl-C). Ctrl-C is what the terminal does:
SIGINT to the foreground process group, here `make run`'s own (it runs in a new session).
Marked `outage`: it stops the shared stack's servers for a while; run it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from blog_testkit import Stack, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.outage, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack.sh"
SERVERS = ("kafka", "postgres", "elasticsearch")
SERVICES = ("PUBLISHER", "COUNTER", "INDEXER", "LAGMON")
# `make run` starts the three servers (stack.sh waits for each) and then the services.
STARTUP_TIMEOUT_S = 420.0
STOP_TIMEOUT_S = 60.0


async def answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def stack_answers(stack: Stack) -> dict[str, bool]:
    """Each server, asked for real: Kafka its cluster metadata, PostgreSQL a query,
    Elasticsearch its health."""
    result = dict.fromkeys(SERVERS, False)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, request_timeout_ms=5000)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(admin.start(), 10)
        result["kafka"] = bool((await asyncio.wait_for(admin.describe_cluster(), 10))["brokers"])
    with contextlib.suppress(Exception):
        await admin.close()
    with contextlib.suppress(Exception):
        connection = await asyncpg.connect(stack.postgres_dsn, timeout=5)
        try:
            result["postgres"] = await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()
    result["elasticsearch"] = await answers(
        f"{stack.es_url}/_cluster/health?wait_for_status=yellow&timeout=1s"
    )
    return result


async def run_stack_script(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(STACK_SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT_S)
    assert process.returncode == 0, f"stack.sh {' '.join(args)}:\n{out.decode()}"


async def test_ctrl_c_on_make_run_stops_the_services_and_leaves_the_stack_up(
    stack: Stack, tmp_path: Path
) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = {**os.environ, **{f"{name}_PORT": str(port) for name, port in ports.items()}}
    for server in SERVERS:
        await run_stack_script("stop", server)
    log_path = tmp_path / "make-run.log"
    make: asyncio.subprocess.Process | None = None
    try:
        with log_path.open("wb") as log:
            # A session of its own, like a terminal's job: its process group gets the SIGINT.
            make = await asyncio.create_subprocess_exec(
                "make", "--no-print-directory", "run",
                cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

        async def everything_up() -> bool:
            assert make is not None
            assert make.returncode is None, log_path.read_text(errors="replace")[-3000:]
            healthy = [await answers(f"http://127.0.0.1:{port}/healthz") for port in ports.values()]
            return all(healthy)

        await wait_until(
            everything_up, timeout=STARTUP_TIMEOUT_S, what="make run: stack and services up",
            interval=1.0,
        )  # fmt: skip
        assert await stack_answers(stack) == dict.fromkeys(SERVERS, True)

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C

        await asyncio.wait_for(make.wait(), STOP_TIMEOUT_S)

        async def services_stopped() -> bool:
            return not any(
                [await answers(f"http://127.0.0.1:{port}/healthz") for port in ports.values()]
            )

        await wait_until(services_stopped, timeout=STOP_TIMEOUT_S, what="the services stopped")
        output = log_path.read_text(errors="replace")
        assert "[run] stopped" in output, output[-3000:]
        for service in ("publisher", "counter", "indexer", "lagmon"):
            # Each stopped gracefully, and its last words reached the terminal.
            assert f"[{service}] " in output
            shutdown = [line for line in output.splitlines() if line.startswith(f"[{service}] ")]
            # On failure, that service's own lines but the health checks: the others' would
            # crowd out what came before its traceback.
            said = "\n".join(line for line in shutdown if "GET /healthz" not in line)
            assert any("Application shutdown complete" in line for line in shutdown), said[-12000:]
        # The stack that `make run` started is still there, and answers.
        assert await stack_answers(stack) == dict.fromkeys(SERVERS, True), output[-3000:]
    finally:
        if make is not None and make.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(make.pid, signal.SIGKILL)
            await asyncio.wait_for(make.wait(), 30)
        # Whatever happened, the other tests need the stack: up is idempotent.
        await run_stack_script("up")
