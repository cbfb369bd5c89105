"""The testkit's own logic: stack resolution, waiting, ports, DSN rewriting, processes."""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from blog_testkit import NO_STACK_MESSAGE, ServiceProcess, Stack, free_port, wait_until
from blog_testkit import processes as processes_module
from blog_testkit.plugin import unique_name, with_database
from blog_testkit.stack import (
    StackUnavailable,
    check_reachable,
    find_state_env,
    read_env_file,
    resolve_stack,
    stack_from_mapping,
)

FULL_ENV = {
    "BLOG_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    "BLOG_POSTGRES_DSN": "postgresql://u:p@127.0.0.1:55432/blog",
    "BLOG_ES_URL": "http://127.0.0.1:9200/",
}


def test_stack_from_all_three_variables() -> None:
    assert stack_from_mapping(FULL_ENV, "env") == Stack(
        kafka_bootstrap="127.0.0.1:9092",
        postgres_dsn="postgresql://u:p@127.0.0.1:55432/blog",
        es_url="http://127.0.0.1:9200",
    )


def test_a_bootstrap_list_counts_its_nodes_unless_the_stack_says() -> None:
    cluster = "127.0.0.1:9092,127.0.0.1:9102,127.0.0.1:9112"
    listed = stack_from_mapping({**FULL_ENV, "BLOG_KAFKA_BOOTSTRAP": cluster}, "env")
    assert listed is not None
    assert (listed.kafka_bootstrap, listed.kafka_nodes) == (cluster, 3)
    told = stack_from_mapping({**FULL_ENV, "KAFKA_NODES": "3"}, "env")
    assert told is not None
    assert told.kafka_nodes == 3


def test_no_variables_means_no_stack_and_partial_is_an_error() -> None:
    assert stack_from_mapping({}, "env") is None
    with pytest.raises(StackUnavailable, match="BLOG_ES_URL"):
        stack_from_mapping({k: v for k, v in FULL_ENV.items() if k != "BLOG_ES_URL"}, "env")


def test_env_file_is_parsed_like_a_shell_would(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    path.write_text(
        "# written by make up\n"
        "BLOG_KAFKA_BOOTSTRAP=127.0.0.1:9092\n"
        "export BLOG_POSTGRES_DSN='postgresql://u:p@h:1/db'\n"
        'BLOG_ES_URL="http://h:9200"\n\n'
    )
    assert read_env_file(path) == {
        "BLOG_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
        "BLOG_POSTGRES_DSN": "postgresql://u:p@h:1/db",
        "BLOG_ES_URL": "http://h:9200",
    }


def test_state_env_is_found_upwards(tmp_path: Path) -> None:
    (tmp_path / ".state").mkdir()
    (tmp_path / ".state" / "stack.env").write_text("X=1\n")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert find_state_env(nested) == (tmp_path / ".state" / "stack.env").resolve()


def test_no_stack_at_all_fails_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("blog_testkit.stack.docker_available", lambda: False)
    with pytest.raises(StackUnavailable) as info, resolve_stack(tmp_path / "nowhere", {}):
        pass
    assert str(info.value) == NO_STACK_MESSAGE


def test_unreachable_stack_names_the_component(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # bound, not listening: connections are refused
        env = {**FULL_ENV, "BLOG_KAFKA_BOOTSTRAP": f"127.0.0.1:{dead_port}"}
        with pytest.raises(StackUnavailable, match="Kafka"), resolve_stack(tmp_path, env):
            pass


def test_kafka_is_reachable_through_any_node_of_its_list() -> None:
    with socket.socket() as dead, socket.socket() as live:
        dead.bind(("127.0.0.1", 0))
        live.bind(("127.0.0.1", 0))
        live.listen()
        addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in (dead, live)]
        # Only Kafka is probed here: the others point at the same listening socket.
        stack = Stack(",".join(addresses), f"postgresql://u:p@{addresses[1]}/db",
                      f"http://{addresses[1]}")  # fmt: skip
        check_reachable(stack)
        with pytest.raises(StackUnavailable, match=addresses[0]):
            check_reachable(Stack(addresses[0], stack.postgres_dsn, stack.es_url))


def test_with_database_keeps_server_and_credentials() -> None:
    assert (
        with_database("postgresql://u:p@h:55432/blog?sslmode=disable", "test_x")
        == "postgresql://u:p@h:55432/test_x?sslmode=disable"
    )


def test_unique_names_are_lowercase_and_distinct() -> None:
    names = {unique_name("test-") for _ in range(100)}
    assert len(names) == 100
    assert all(n == n.lower() and n.startswith("test-") for n in names)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # A kernel that offers the same port again (it may, once the probe socket is closed).
    offered = iter([41001, 41001, 41001, 41002])

    class ProbeSocket:
        def __init__(self, *args: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> ProbeSocket:
            return self

        def __exit__(self, *args: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(socket, "socket", ProbeSocket)
    monkeypatch.setattr(processes_module, "_handed_out", set())
    assert [free_port(), free_port()] == [41001, 41002]


async def test_wait_until_returns_the_truthy_value() -> None:
    polls = 0

    async def third_time() -> str | None:
        nonlocal polls
        polls += 1
        return "ready" if polls >= 3 else None

    assert await wait_until(third_time, timeout=5, what="third poll", interval=0.01) == "ready"
    assert polls == 3


async def test_wait_until_names_what_it_waited_for_and_the_last_error() -> None:
    async def broken() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(AssertionError, match=r"the service.*nobody home"):
        await wait_until(broken, timeout=0.2, what="the service", interval=0.05)

    async def never() -> int:
        return 0

    with pytest.raises(AssertionError, match=r"timed out after 0.1s waiting for zero.*0"):
        await wait_until(never, timeout=0.1, what="zero", interval=0.05)


FAKE_SERVICE = textwrap.dedent(
    """
    import os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    import threading

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(os.environ["FAKE_GREETING"].encode())

    server = HTTPServer(("127.0.0.1", int(os.environ["FAKE_PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("fake service up", flush=True)
    server.serve_forever()
    print("fake service stopped cleanly", flush=True)
    """
)


@pytest.fixture
def fake_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    (tmp_path / "fake_service.py").write_text(FAKE_SERVICE)
    monkeypatch.setattr(processes_module, "artifacts_dir", tmp_path / "artifacts")
    return {"PYTHONPATH": str(tmp_path), "FAKE_GREETING": "hi"}


async def test_service_process_lifecycle(fake_service: dict[str, str]) -> None:
    port = free_port()
    service = ServiceProcess("fake", "fake_service", {**fake_service, "FAKE_PORT": str(port)}, port)
    await service.start(timeout=20)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{service.url}/healthz")).text == "hi"
    assert service.log_path is not None
    assert service.log_path.name == "fake-1.log"
    assert await service.terminate(timeout=10) == 0
    assert "stopped cleanly" in service.log_text()

    await service.start(timeout=20)  # a restart gets a new log file
    assert service.log_path.name == "fake-2.log"
    service.kill()
    assert await service.wait_exit(10) == -9
    assert "stopped cleanly" not in service.log_text()


async def test_service_that_dies_at_startup_fails_fast_with_its_log(
    fake_service: dict[str, str],
) -> None:
    port = free_port()
    broken = ServiceProcess("broken", "fake_service", fake_service, port)  # no FAKE_PORT
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AssertionError, match="KeyError: 'FAKE_PORT'"):
        await broken.start(timeout=30)
    assert loop.time() - started < 20
    assert not broken.running


def test_python_executable_is_this_interpreter() -> None:
    # Services must run inside the same environment as the tests.
    assert Path(sys.executable).exists()
