"""What docker-compose.yml must get right for a Docker user. Each check returns the problems it
finds (empty: fine), so a test can also prove that it catches a broken copy of the file."""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft7Validator
from pydantic_settings import BaseSettings

from tests.compose.model import REPO_ROOT, Compose, Mode, Service, duration_s, environment
from tests.compose.stop_budget import StopBudget

# After the timed steps of a graceful stop: closing the Kafka, PostgreSQL and Elasticsearch
# clients and the interpreter's exit.
STOP_MARGIN_S = 5.0
# `no` (the default) leaves a container stopped for good after one failed start.
RESTART_POLICIES = re.compile(r"always|unless-stopped|on-failure(:\d+)?")
# Variables the database driver reads for itself (asyncpg honours libpq's PGPASSWORD when the URL
# has no password), given to services that have a database URL setting.
DRIVER_ENV = frozenset({"PGPASSWORD"})
# Where the one-time password may appear: the server's initial password and the driver's variable.
PASSWORD_KEYS = frozenset({"POSTGRES_PASSWORD", "PGPASSWORD"})
KAFKA_INTERNAL_PORT = 19092
KAFKA_CONTROLLER_PORT = 9093
STACK_SH = REPO_ROOT / "deploy" / "local" / "stack.sh"
# Settings of the native elasticsearch.yml that describe that one machine, not the cluster.
NATIVE_ES_MACHINE_SETTINGS = frozenset(
    {"cluster.name", "node.name", "network.host", "http.port", "transport.port"}
)


def image_kind(service: Service) -> str | None:
    """Which stateful server a service runs, by its image (None: not one of them)."""
    image = str(service.get("image", ""))
    for kind, prefix in (
        ("kafka", "apache/kafka:"),
        ("postgres", "postgres:"),
        ("elasticsearch", "docker.elastic.co/elasticsearch/elasticsearch:"),
    ):
        if image.startswith(prefix):
            return kind
    return None


def data_dir(service: Service) -> str:
    """Where the server keeps its data in the container."""
    env = environment(service)
    kind = image_kind(service)
    if kind == "kafka":
        # The image's own default (/tmp/kraft-combined-logs) is never on a volume.
        return env.get("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs")
    if kind == "postgres":
        return env.get("PGDATA", "/var/lib/postgresql/data")
    return "/usr/share/elasticsearch/data"


def schema_problems(compose: Compose, schema: Mapping[str, Any]) -> list[str]:
    validator = Draft7Validator(schema)
    return [
        f"/{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    ]


def _command_words(healthcheck: Mapping[str, Any]) -> list[str]:
    test = healthcheck.get("test", [])
    if isinstance(test, str):
        return shlex.split(test)
    if test and test[0] == "CMD-SHELL":
        return shlex.split(" ".join(test[1:]))
    return [str(word) for word in test[1:]]


def _option(words: list[str], short: str, long: str) -> str | None:
    for i, word in enumerate(words):
        if word in (short, long) and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(f"{long}="):
            return word.partition("=")[2]
    return None


def healthcheck_problems(compose: Compose) -> list[str]:
    problems = []
    services = compose["services"]
    for name, service in services.items():
        if image_kind(service) == "postgres":
            words = _command_words(service.get("healthcheck", {}))
            host = _option(words, "-h", "--host") if "pg_isready" in words else None
            if host is None or host.startswith("/"):
                problems.append(
                    f"{name}: the healthcheck must run pg_isready over TCP (-h 127.0.0.1); on "
                    "the Unix socket the init-time server looks ready before TCP accepts"
                )
        for target, condition in _dependencies(service).items():
            wanted = condition.get("condition") == "service_healthy"
            check = services.get(target, {}).get("healthcheck")
            if wanted and target in services and (not check or check.get("disable")):
                problems.append(
                    f"{name} waits for {target} to be healthy, which has no healthcheck"
                )
    return problems


def restart_problems(compose: Compose) -> list[str]:
    return [
        f"{name}: restart is {service.get('restart', 'no (the default)')!r}; a failed start "
        "would leave it stopped for good"
        for name, service in compose["services"].items()
        if not RESTART_POLICIES.fullmatch(str(service.get("restart", "no")))
    ]


def stop_grace_problems(compose: Compose, budgets: Mapping[str, StopBudget]) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        if "stop_grace_period" not in service:
            problems.append(f"{name}: no stop_grace_period (Compose kills after 10 s)")
            continue
        grace = duration_s(str(service["stop_grace_period"]))
        budget = budgets.get(name)
        if budget is not None and grace < budget.seconds + STOP_MARGIN_S:
            problems.append(
                f"{name}: stop_grace_period {grace:g} s < its own graceful stop "
                f"({budget.explain()}) + {STOP_MARGIN_S:g} s to close"
            )
    return problems


def _named_volume(mount: Any) -> tuple[str | None, str]:
    """(volume name or None for a bind/anonymous mount, target) of a `volumes:` entry."""
    if isinstance(mount, dict):
        named = mount.get("type") == "volume" and mount.get("source")
        return (str(mount["source"]) if named else None), str(mount.get("target", ""))
    parts = str(mount).split(":")
    if len(parts) == 1:
        return None, parts[0]
    source = parts[0]
    is_path = source.startswith((".", "/", "~"))
    return (None if is_path else source), parts[1]


def volume_problems(compose: Compose) -> list[str]:
    problems = []
    declared = set(compose.get("volumes") or {})
    owners: Counter[str] = Counter()
    for name, service in compose["services"].items():
        if image_kind(service) is None:
            continue
        target = data_dir(service)
        mounted = [_named_volume(m) for m in service.get("volumes", [])]
        named = [volume for volume, at in mounted if volume is not None and at == target]
        if not named:
            problems.append(f"{name}: no named volume at its data directory {target}")
        for volume in named:
            owners[volume] += 1
            if volume not in declared:
                problems.append(f"{name}: volume {volume} is not declared under top-level volumes")
    problems += [f"volume {v} is shared by {n} servers" for v, n in owners.items() if n > 1]
    return problems


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _strings(item, f"{path}/{i}")


def password_problems(compose: Compose, password: str) -> list[str]:
    """The password is in no URL, and only where a server or driver reads it on its own."""
    problems = []
    for path, value in _strings(compose["services"], ""):
        key = path.rsplit("/", 1)[-1]
        if "://" in value:
            try:
                in_url = urlsplit(value).password is not None
            except ValueError:
                in_url = True
            if in_url or password in value:
                problems.append(f"services{path}: a password inside a URL")
                continue
        if password in value and key not in PASSWORD_KEYS:
            problems.append(f"services{path}: the password outside {sorted(PASSWORD_KEYS)}")
    return problems


def env_name_problems(
    compose: Compose, settings: Mapping[str, tuple[str, type[BaseSettings]]]
) -> list[str]:
    """Each variable given to a service is a setting it reads (or its database driver's)."""
    problems = []
    for name, (prefix, settings_class) in settings.items():
        env = environment(compose["services"][name])
        known = {prefix + field.upper() for field in settings_class.model_fields}
        reads_database = "database_url" in settings_class.model_fields
        if reads_database:
            known |= DRIVER_ENV
            if not set(env) >= DRIVER_ENV:
                problems.append(f"{name}: has a database URL but no PGPASSWORD to log in with")
        unknown = sorted(set(env) - known)
        if unknown:
            problems.append(f"{name} is given settings it does not read: {unknown}")
    return problems


def _dependencies(service: Service) -> dict[str, dict[str, Any]]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {target: {"condition": "service_started"} for target in depends}
    return {str(target): dict(spec or {}) for target, spec in depends.items()}


def _bootstrap_hosts(service: Service) -> list[tuple[str, int]]:
    hosts = []
    for key, value in environment(service).items():
        if key.endswith("_KAFKA_BOOTSTRAP_SERVERS"):
            for entry in value.split(","):
                host, _, port = entry.strip().rpartition(":")
                hosts.append((host, int(port)))
    return hosts


def dependency_problems(compose: Compose, mode: Mode) -> list[str]:
    """What `docker compose up` would refuse or get wrong in this mode: a dependency on a disabled
    service that is required, a Kafka bootstrap address that is not a running node's internal
    listener, or a service that does not wait for the nodes it bootstraps from."""
    problems = []
    enabled, running = mode.enabled(compose), mode.running(compose)
    for name, service in running.items():
        dependencies = _dependencies(service)
        for target, spec in dependencies.items():
            if target not in enabled and spec.get("required", True):
                problems.append(f"{name} requires {target}, which this mode does not enable")
        for host, port in _bootstrap_hosts(service):
            node = running.get(host)
            if node is None or image_kind(node) != "kafka" or port != KAFKA_INTERNAL_PORT:
                problems.append(f"{name} bootstraps from {host}:{port}: not a running Kafka node")
            elif dependencies.get(host, {}).get("condition") != "service_healthy":
                problems.append(f"{name} does not wait for {host} to be healthy")
    return problems


def _host_port(published: Any) -> str | None:
    if isinstance(published, dict):
        return f"{published.get('host_ip', '')}:{published.get('published')}"
    parts = str(published).split(":")
    return ":".join(parts[:-1]) if len(parts) > 1 else None


def port_problems(compose: Compose, mode: Mode) -> list[str]:
    bound: Counter[str] = Counter()
    for service in mode.running(compose).values():
        for published in service.get("ports", []):
            address = _host_port(published)
            if address is not None:
                bound[address] += 1
    return [f"host port {address} is published {n} times" for address, n in bound.items() if n > 1]


def _is_cluster_id(text: str) -> bool:
    try:
        return len(text) == 22 and len(base64.urlsafe_b64decode(text + "==")) == 16
    except (binascii.Error, ValueError):
        return False


def kafka_problems(compose: Compose, mode: Mode) -> list[str]:
    """The running Kafka nodes form one KRaft cluster: one persistent cluster id, a voter per
    node, listeners that match their service names and published ports, and replication that
    fits the node count (3 nodes: factor 3, min ISR 2)."""
    nodes = {n: s for n, s in mode.running(compose).items() if image_kind(s) == "kafka"}
    if not nodes:
        return ["no Kafka node runs"]
    problems = []
    envs = {name: environment(service) for name, service in nodes.items()}
    cluster_ids = {env.get("CLUSTER_ID", "") for env in envs.values()}
    if len(cluster_ids) != 1 or not _is_cluster_id(next(iter(cluster_ids))):
        problems.append(f"the nodes need one fixed, valid CLUSTER_ID; got {sorted(cluster_ids)}")
    expected_voters = {
        f"{env.get('KAFKA_NODE_ID')}@{name}:{KAFKA_CONTROLLER_PORT}" for name, env in envs.items()
    }
    replicas = min(3, len(nodes))
    wanted = {
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": replicas,
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": replicas,
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": min(2, replicas),
        "KAFKA_DEFAULT_REPLICATION_FACTOR": replicas,
        "KAFKA_MIN_INSYNC_REPLICAS": min(2, replicas),
    }
    for name, env in envs.items():
        voters = set(env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(","))
        if voters != expected_voters:
            problems.append(
                f"{name}: voters {sorted(voters)} != the nodes {sorted(expected_voters)}"
            )
        for setting, value in wanted.items():
            if int(env.get(setting, "1")) != value:
                problems.append(
                    f"{name}: {setting}={env.get(setting, '1 (default)')}, want {value}"
                )
        advertised = {
            listener.partition("://")[0]: listener.partition("://")[2]
            for listener in env.get("KAFKA_ADVERTISED_LISTENERS", "").split(",")
        }
        if advertised.get("INTERNAL") != f"{name}:{KAFKA_INTERNAL_PORT}":
            problems.append(f"{name}: advertises INTERNAL {advertised.get('INTERNAL')}")
        published = {_host_port(p) for p in nodes[name].get("ports", [])}
        if advertised.get("HOST") not in published:
            problems.append(
                f"{name}: advertises HOST {advertised.get('HOST')}, publishes {published}"
            )
    ids = [env.get("KAFKA_NODE_ID") for env in envs.values()]
    if len(set(ids)) != len(ids):
        problems.append(f"node ids repeat: {ids}")
    return problems


def native_es_settings(stack_sh: Path = STACK_SH) -> dict[str, str]:
    """The cluster settings of the native stack's elasticsearch.yml (the heredoc in stack.sh),
    without the ones that name that machine's ports, paths and names."""
    text = stack_sh.read_text()
    match = re.search(r'elasticsearch\.yml" <<EOF\n(.*?)\nEOF', text, re.DOTALL)
    if match is None:
        return {}
    settings = {}
    for line in match.group(1).splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not key or key.startswith("#") or "$" in value or key.startswith("path."):
            continue
        if key not in NATIVE_ES_MACHINE_SETTINGS:
            settings[key] = value
    return settings


def es_parity_problems(compose: Compose, native: Mapping[str, str]) -> list[str]:
    if not native:
        return [f"no elasticsearch.yml found in {STACK_SH.relative_to(REPO_ROOT)}"]
    problems = []
    for name, service in compose["services"].items():
        if image_kind(service) != "elasticsearch":
            continue
        env = environment(service)
        for key, value in native.items():
            if env.get(key) != value:
                problems.append(f"{name}: {key}={env.get(key)!r}, the native stack has {value!r}")
    return problems
