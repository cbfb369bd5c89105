"""Where the Kafka / PostgreSQL / Elasticsearch stack for the tests is.

Resolution order:
1. the environment: BLOG_KAFKA_BOOTSTRAP, BLOG_POSTGRES_DSN, BLOG_ES_URL (all three);
2. `.state/stack.env`, written by `make up` (native stack), found upwards from the rootdir;
3. containers via testcontainers, only when none of the above is set and a Docker engine answers;
4. otherwise the integration tests fail at once with `NO_STACK_MESSAGE`.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service_kit.kafka_clients import KafkaSecurity, stack_security

ENV_KAFKA = "BLOG_KAFKA_BOOTSTRAP"
ENV_POSTGRES = "BLOG_POSTGRES_DSN"
ENV_ES = "BLOG_ES_URL"
ENV_KAFKA_NODES = "KAFKA_NODES"
# Each PostgreSQL-using service's own role (optional: a container stack has only the admin).
SERVICE_DSN_VARS = {"publisher": "BLOG_PUBLISHER_DSN", "counter": "BLOG_COUNTER_DSN"}
STACK_VARS = (ENV_KAFKA, ENV_POSTGRES, ENV_ES)
STATE_ENV_FILE = Path(".state") / "stack.env"

NO_STACK_MESSAGE = (
    "No stack: run `make up` (native) or set BLOG_KAFKA_BOOTSTRAP, BLOG_POSTGRES_DSN, BLOG_ES_URL"
)

KAFKA_IMAGE = "apache/kafka:4.1.1"
POSTGRES_IMAGE = "postgres:15"
ELASTICSEARCH_IMAGE = "docker.elastic.co/elasticsearch/elasticsearch:8.19.7"


class StackUnavailable(Exception):
    """No usable stack; the message says what to do."""


@dataclass(frozen=True)
class Stack:
    kafka_bootstrap: str  # comma-separated brokers: every node of the native stack
    # Holds the password: kept out of repr, so it never lands in pytest's failure output.
    postgres_dsn: str = field(repr=False)
    es_url: str
    # Kafka nodes (KAFKA_NODES of the native stack; else one per bootstrap address).
    kafka_nodes: int = 1
    # service -> DSN of its own role (owner of the schema of that name only); passwords inside.
    service_dsns: Mapping[str, str] = field(default_factory=dict, repr=False)
    # How the tests' own Kafka clients log in (the stack's admin user in KAFKA_AUTH=scram mode).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity, repr=False)


def service_dsns(values: Mapping[str, str]) -> dict[str, str]:
    """service -> DSN of its own PostgreSQL role, for the services the env names one for."""
    return {svc: values[var] for svc, var in SERVICE_DSN_VARS.items() if values.get(var)}


def stack_from_mapping(values: Mapping[str, str], origin: str) -> Stack | None:
    """A Stack when all three variables are set, None when none is, an error when only some are."""
    present = {name: values[name] for name in STACK_VARS if values.get(name)}
    if not present:
        return None
    missing = [name for name in STACK_VARS if name not in present]
    if missing:
        raise StackUnavailable(f"{origin} sets {', '.join(present)} but not {', '.join(missing)}")
    nodes = values.get(ENV_KAFKA_NODES, "")
    return Stack(
        kafka_bootstrap=present[ENV_KAFKA],
        postgres_dsn=present[ENV_POSTGRES],
        es_url=present[ENV_ES].rstrip("/"),
        kafka_nodes=int(nodes) if nodes.isdigit() else len(present[ENV_KAFKA].split(",")),
        service_dsns=service_dsns(values),
        kafka_security=stack_security(values),
    )


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (shell style: comments, `export`, optional quotes)."""
    values: dict[str, str] = {}
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def find_state_env(start: Path) -> Path | None:
    """`.state/stack.env` in `start` or the nearest parent that has one."""
    for directory in (start.resolve(), *start.resolve().parents):
        candidate = directory / STATE_ENV_FILE
        if candidate.is_file():
            return candidate
    return None


def check_reachable(stack: Stack, timeout: float = 3.0) -> None:
    """Fail fast, naming the component, when an address answers nothing (stack not running).
    Kafka is reachable when any broker of the bootstrap list answers."""
    endpoints = {
        "Kafka": [_host_port(address, 9092) for address in stack.kafka_bootstrap.split(",")],
        "PostgreSQL": [_host_port(urlsplit(stack.postgres_dsn).netloc.rpartition("@")[2], 5432)],
        "Elasticsearch": [_host_port(urlsplit(stack.es_url).netloc, 9200)],
    }
    for component, addresses in endpoints.items():
        errors = []
        for host, port in addresses:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                break
            except OSError as exc:
                errors.append(f"{host}:{port} ({exc})")
        else:
            raise StackUnavailable(
                f"{component} at {', '.join(errors)} is not reachable. {NO_STACK_MESSAGE}"
            )


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address.strip("[]"), default_port
    return host.strip("[]"), int(port)


def docker_available() -> bool:
    """True when the testcontainers extra is installed and a Docker engine answers."""
    try:
        docker: Any = importlib.import_module("docker")  # comes with testcontainers
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def container_stack() -> Iterator[Stack]:
    """Kafka (KRaft, apache/kafka), PostgreSQL and Elasticsearch 8.19 (security off) in containers,
    removed on exit."""
    from testcontainers.core.container import DockerContainer

    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.14
        from testcontainers.postgres import PostgresContainer
    try:
        from testcontainers.community.elasticsearch import (
            ElasticSearchContainer,
        )
    except ImportError:
        from testcontainers.elasticsearch import ElasticSearchContainer

    from blog_testkit.processes import free_port

    with contextlib.ExitStack() as stack:
        # testcontainers' KafkaContainer drives the Confluent image's scripts; the official
        # image is configured through KAFKA_* variables instead. The advertised listener must
        # be the address clients use, so the host port is chosen first and mapped 1:1.
        kafka_port = free_port()
        kafka: Any = (
            DockerContainer(KAFKA_IMAGE)
            .with_bind_ports(kafka_port, kafka_port)
            .with_env("KAFKA_NODE_ID", "1")
            .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env("KAFKA_LISTENERS", f"PLAINTEXT://0.0.0.0:{kafka_port},CONTROLLER://:9093")
            .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{kafka_port}")
            .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env(
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
            )
            .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
            .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        )
        postgres: Any = PostgresContainer(POSTGRES_IMAGE, driver=None)
        elasticsearch: Any = (
            ElasticSearchContainer(ELASTICSEARCH_IMAGE, mem_limit="2G")
            .with_env("xpack.security.enabled", "false")
            .with_env("discovery.type", "single-node")
            .with_env("ES_JAVA_OPTS", "-Xms512m -Xmx512m")
        )
        for container in (kafka, postgres, elasticsearch):
            stack.enter_context(container)

        es_url = (
            f"http://{elasticsearch.get_container_host_ip()}:"
            f"{elasticsearch.get_exposed_port(elasticsearch.port)}"
        )
        result = Stack(
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            postgres_dsn=postgres.get_connection_url(),
            es_url=es_url,
        )
        _wait_for_tcp("127.0.0.1", kafka_port, timeout=120)
        _wait_for_http(f"{es_url}/_cluster/health?wait_for_status=yellow&timeout=1s", timeout=180)
        yield result


def _wait_for_tcp(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _wait_for_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local http
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:g}s")
        time.sleep(1)


@contextlib.contextmanager
def resolve_stack(rootdir: Path, environ: Mapping[str, str]) -> Iterator[Stack]:
    """The stack to test against (see the module doc for the order); raises StackUnavailable."""
    from_env = stack_from_mapping(environ, "the environment")
    if from_env is None:
        state_file = find_state_env(rootdir)
        if state_file is not None:
            from_env = stack_from_mapping(read_env_file(state_file), str(state_file))
    if from_env is not None:
        check_reachable(from_env)
        yield from_env
        return
    if not docker_available():
        raise StackUnavailable(NO_STACK_MESSAGE)
    with container_stack() as from_containers:
        yield from_containers
