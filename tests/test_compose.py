"""docker-compose.yml cannot run on machines without a Docker engine, so check it offline the way
Compose reads it: variables substituted, validated against the Compose Specification's JSON
Schema, then what a Docker user relies on, in every mode the README's commands run it (one Kafka
node, or `--profile cluster`). Each check is also shown to fail on a broken copy."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic_settings import BaseSettings

from blog_testkit import Stack
from counter.settings import Settings as CounterSettings
from indexer.settings import IndexerSettings
from lagmon.settings import Settings as LagmonSettings
from publisher.settings import PublisherSettings
from service_kit.settings import ConsumerGroupSettings
from tests.compose import checks
from tests.compose.model import (
    COMPOSE_FILE,
    REPO_ROOT,
    Compose,
    InterpolationError,
    Mode,
    documented_up_commands,
    duration_s,
    environment,
    interpolate,
    load,
    mode_of,
)
from tests.compose.stop_budget import StopBudget, stop_budget

SERVICES: dict[str, tuple[str, type[BaseSettings]]] = {
    "publisher": ("PUBLISHER_", PublisherSettings),
    "counter": ("COUNTER_", CounterSettings),
    "indexer": ("INDEXER_", IndexerSettings),
    "lagmon": ("LAGMON_", LagmonSettings),
}
STATEFUL_SERVERS = {"kafka", "kafka-1", "kafka-2", "kafka-3", "postgres", "elasticsearch"}
# Every character that breaks a URL, and a `$` that must not be interpolated a second time.
AWKWARD_PASSWORD = "p@ss:w/rd#?%&=+ ${x}'\"\\"
SCHEMA_ENV = "BLOG_COMPOSE_SCHEMA"
DEFAULT_SCHEMA = "../shared/compose-spec/compose-spec.json"  # beside the checkout

MODES = [
    mode_of(command, {"PG_PASSWORD": AWKWARD_PASSWORD}) for command in documented_up_commands()
]
MODE_IDS = ["+".join(sorted(mode.profiles)) or "default" for mode in MODES]


def mode_compose(mode: Mode) -> Compose:
    return load(mode.env)


@pytest.fixture(scope="module")
def compose() -> Compose:
    """The file as the README's first command runs it."""
    return load(MODES[0].env)


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    path = (REPO_ROOT / os.environ.get(SCHEMA_ENV, DEFAULT_SCHEMA)).resolve()
    if not path.is_file():
        message = (
            f"no Compose Specification schema at {path}: set {SCHEMA_ENV} to compose-spec.json "
            "(github.com/compose-spec/compose-spec, schema/compose-spec.json)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


@pytest.fixture(scope="module")
def budgets() -> dict[str, StopBudget]:
    return {name: stop_budget(name, settings) for name, (_, settings) in SERVICES.items()}


# -- reading the file as Compose does --------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "env", "expected"),
    [
        ("${X:-d}", {}, "d"),
        ("${X:-d}", {"X": ""}, "d"),
        ("${X-d}", {"X": ""}, ""),
        ("${X:-d}", {"X": "v"}, "v"),
        ("${X:-${Y:-inner}}", {}, "inner"),
        ("${X:+alt}", {"X": "v"}, "alt"),
        ("${X:+alt}", {}, ""),
        ("$X/${X}", {"X": "v"}, "v/v"),
        ("$$X", {"X": "v"}, "$X"),
        ("${X}", {"X": "a$b${c}"}, "a$b${c}"),
        ("${UNSET}", {}, ""),
    ],
)
def test_interpolation_follows_compose_rules(
    template: str, env: dict[str, str], expected: str
) -> None:
    assert interpolate(template, env) == expected


@pytest.mark.parametrize("template", ["${X:?set X}", "${X?set X}", "$", "${X"])
def test_interpolation_refuses_what_compose_refuses(template: str) -> None:
    with pytest.raises(InterpolationError):
        interpolate(template, {})


def test_compose_refuses_to_start_without_a_password() -> None:
    with pytest.raises(InterpolationError, match="PG_PASSWORD"):
        load({})


def test_readme_documents_one_node_and_the_cluster() -> None:
    assert [sorted(mode.profiles) for mode in MODES] == [[], ["cluster"]], MODES


# -- the schema and the points the issue lists, in every documented mode ---------------------------


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_validates_against_the_compose_specification(
    compose_schema: dict[str, Any], mode: Mode
) -> None:
    assert checks.schema_problems(mode_compose(mode), compose_schema) == []


def test_healthchecks_postgres_over_tcp_and_every_awaited_server(compose: Compose) -> None:
    assert checks.healthcheck_problems(compose) == []


def test_every_service_has_a_restart_policy(compose: Compose) -> None:
    assert checks.restart_problems(compose) == []


def test_stop_grace_period_covers_each_services_own_stop(
    compose: Compose, budgets: dict[str, StopBudget]
) -> None:
    assert checks.stop_grace_problems(compose, budgets) == []


def test_stop_budget_reads_each_services_shutdown_steps(budgets: dict[str, StopBudget]) -> None:
    """The reader found the steps each kind of service has, so the budget is not vacuous."""
    for name, (_, settings) in SERVICES.items():
        steps = [step.what for step in budgets[name].steps]
        assert steps[0] == "uvicorn drain", budgets[name].explain()
        if issubclass(settings, ConsumerGroupSettings):
            assert "consumer stop" in steps, budgets[name].explain()
        if "relay_enabled" in settings.model_fields:
            assert any(what.startswith("wait_for(relay") for what in steps), budgets[name].explain()


def test_each_stateful_server_keeps_its_data_in_a_named_volume(compose: Compose) -> None:
    servers = {n for n, s in compose["services"].items() if checks.image_kind(s) is not None}
    assert servers == STATEFUL_SERVERS
    assert checks.volume_problems(compose) == []


def test_password_is_never_inside_a_url(compose: Compose) -> None:
    assert checks.password_problems(compose, AWKWARD_PASSWORD) == []


def test_service_env_names_only_settings_it_reads(compose: Compose) -> None:
    assert checks.env_name_problems(compose, SERVICES) == []


def test_elasticsearch_has_the_native_stacks_cluster_settings(compose: Compose) -> None:
    native = checks.native_es_settings()
    assert "cluster.routing.allocation.disk.threshold_enabled" in native
    assert checks.es_parity_problems(compose, native) == []


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_services_wait_for_and_bootstrap_from_the_running_kafka(mode: Mode) -> None:
    assert checks.dependency_problems(mode_compose(mode), mode) == []


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_no_host_port_is_published_twice(mode: Mode) -> None:
    assert checks.port_problems(mode_compose(mode), mode) == []


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_kafka_nodes_form_one_persistent_cluster(mode: Mode) -> None:
    compose = mode_compose(mode)
    assert checks.kafka_problems(compose, mode) == []
    nodes = [n for n, s in mode.running(compose).items() if checks.image_kind(s) == "kafka"]
    assert len(nodes) == (3 if "cluster" in mode.profiles else 1), nodes


# -- each check catches a broken copy --------------------------------------------------------------

Mutation = Callable[[Compose], None]


def _set(service: str, key: str, value: Any) -> Mutation:
    def mutate(compose: Compose) -> None:
        compose["services"][service][key] = value

    return mutate


def _drop(service: str, key: str) -> Mutation:
    def mutate(compose: Compose) -> None:
        del compose["services"][service][key]

    return mutate


def _set_env(service: str, name: str, value: str) -> Mutation:
    def mutate(compose: Compose) -> None:
        compose["services"][service]["environment"][name] = value

    return mutate


def _drop_env(service: str, name: str) -> Mutation:
    def mutate(compose: Compose) -> None:
        del compose["services"][service]["environment"][name]

    return mutate


SOCKET_HEALTHCHECK = {"test": ["CMD-SHELL", "pg_isready -U blog -d blog"], "interval": "2s"}
PASTED_URL = f"postgresql://blog:{AWKWARD_PASSWORD}@postgres:5432/blog"
Check = Callable[[Compose], list[str]]
BROKEN_COPIES = [
    pytest.param(
        _set("postgres", "healthcheck", SOCKET_HEALTHCHECK),
        checks.healthcheck_problems,
        "postgres",
        id="socket healthcheck",
    ),
    pytest.param(
        _drop("elasticsearch", "healthcheck"),
        checks.healthcheck_problems,
        "indexer waits for elasticsearch",
        id="healthy wait without a check",
    ),
    pytest.param(_drop("counter", "restart"), checks.restart_problems, "counter", id="no restart"),
    pytest.param(_set("kafka", "restart", "no"), checks.restart_problems, "kafka", id="restart no"),
    pytest.param(
        _drop("lagmon", "stop_grace_period"),
        lambda c: checks.stop_grace_problems(c, {}),
        "lagmon",
        id="compose's 10 s stop",
    ),
    pytest.param(
        _set("indexer", "stop_grace_period", "30s"),
        lambda c: checks.stop_grace_problems(
            c, {"indexer": stop_budget("indexer", IndexerSettings)}
        ),
        "indexer",
        id="stop shorter than the service's",
    ),
    pytest.param(_drop("kafka", "volumes"), checks.volume_problems, "kafka", id="kafka no volume"),
    pytest.param(
        _drop_env("kafka-2", "KAFKA_LOG_DIRS"),
        checks.volume_problems,
        "kafka-2",
        id="kafka log in /tmp",
    ),
    pytest.param(
        _set("postgres", "volumes", ["./pg:/var/lib/postgresql/data"]),
        checks.volume_problems,
        "postgres",
        id="bind mount",
    ),
    pytest.param(
        _set_env("publisher", "PUBLISHER_DATABASE_URL", PASTED_URL),
        lambda c: checks.password_problems(c, AWKWARD_PASSWORD),
        "PUBLISHER_DATABASE_URL",
        id="password in the URL",
    ),
    pytest.param(
        _set_env("counter", "COUNTER_LOG_LEVEL", AWKWARD_PASSWORD),
        lambda c: checks.password_problems(c, AWKWARD_PASSWORD),
        "COUNTER_LOG_LEVEL",
        id="password in a setting",
    ),
    pytest.param(
        _set_env("counter", "COUNTER_NOPE", "1"),
        lambda c: checks.env_name_problems(c, SERVICES),
        "COUNTER_NOPE",
        id="unknown setting",
    ),
    pytest.param(
        _drop_env("publisher", "PGPASSWORD"),
        lambda c: checks.env_name_problems(c, SERVICES),
        "publisher",
        id="no PGPASSWORD",
    ),
    pytest.param(
        _set_env("lagmon", "PGPASSWORD", "x"),
        lambda c: checks.env_name_problems(c, SERVICES),
        "lagmon",
        id="PGPASSWORD without a database",
    ),
    pytest.param(
        _drop_env("elasticsearch", "cluster.routing.allocation.disk.threshold_enabled"),
        lambda c: checks.es_parity_problems(c, checks.native_es_settings()),
        "disk.threshold",
        id="no disk threshold setting",
    ),
    pytest.param(
        _set("lagmon", "depends_on", {"kafka-1": {}}),
        lambda c: checks.dependency_problems(c, MODES[0]),
        "lagmon requires kafka-1",
        id="requires a disabled node",
    ),
]


@pytest.mark.parametrize(("mutate", "check", "named"), BROKEN_COPIES)
def test_check_catches_a_broken_copy(
    compose: Compose, mutate: Mutation, check: Check, named: str
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = check(broken)
    assert any(named in problem for problem in problems), problems


def test_schema_rejects_a_typo(compose: Compose, compose_schema: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["counter"]["restart_policy"] = "always"
    problems = checks.schema_problems(broken, compose_schema)
    assert any("restart_policy" in problem for problem in problems), problems


CLUSTER = next(mode for mode in MODES if "cluster" in mode.profiles)
NO_SCALE = Mode("without --scale kafka=0", CLUSTER.env, CLUSTER.profiles)
NO_BOOTSTRAP = Mode(
    "without KAFKA_BOOTSTRAP", {"PG_PASSWORD": "x"}, CLUSTER.profiles, CLUSTER.scale
)
ONE_NODE = Mode("bootstrap to the cluster, no profile", CLUSTER.env, frozenset(), {})


@pytest.mark.parametrize(
    ("mode", "check", "named"),
    [
        (NO_SCALE, checks.port_problems, "127.0.0.1:9092"),
        (NO_SCALE, checks.kafka_problems, "voters"),
        (NO_BOOTSTRAP, checks.dependency_problems, "bootstraps from kafka:19092"),
        (ONE_NODE, checks.dependency_problems, "bootstraps from kafka-1:19092"),
    ],
    ids=lambda value: value.command if isinstance(value, Mode) else "",
)
def test_mode_checks_catch_a_wrong_command(
    mode: Mode, check: Callable[[Compose, Mode], list[str]], named: str
) -> None:
    problems = check(mode_compose(mode), mode)
    assert any(named in problem for problem in problems), problems


def test_a_cluster_node_with_its_own_cluster_id_is_caught() -> None:
    compose = mode_compose(CLUSTER)
    compose["services"]["kafka-3"]["environment"]["CLUSTER_ID"] = "3UzQLqZLTgOJb5iojQ8Yjg"
    assert any("CLUSTER_ID" in problem for problem in checks.kafka_problems(compose, CLUSTER))


# -- images and builds -----------------------------------------------------------------------------


def test_defines_the_three_servers_from_official_images(compose: Compose) -> None:
    images = {name: spec.get("image", "") for name, spec in compose["services"].items()}
    assert images["kafka"].startswith("apache/kafka:4.")
    assert images["postgres"].startswith("postgres:")
    assert images["elasticsearch"].startswith("docker.elastic.co/elasticsearch/elasticsearch:8.")
    es_env = environment(compose["services"]["elasticsearch"])
    assert es_env["discovery.type"] == "single-node"
    assert es_env["xpack.security.enabled"] == "false"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_is_built_from_its_own_dockerfile(compose: Compose, service: str) -> None:
    build = compose["services"][service]["build"]
    dockerfile = COMPOSE_FILE.parent / build["dockerfile"]
    assert build["dockerfile"] == f"services/{service}/Dockerfile"
    text = dockerfile.read_text()
    assert "USER " in text, f"{dockerfile} must run as a non-root user"
    assert text.count("FROM ") >= 2, f"{dockerfile} must be a multi-stage build"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_port_matches_native_default(compose: Compose, service: str) -> None:
    prefix, settings_class = SERVICES[service]
    env = environment(compose["services"][service])
    default_port = settings_class.model_fields["port"].default
    assert int(env[f"{prefix}PORT"]) == default_port
    assert compose["services"][service]["ports"] == [f"127.0.0.1:{default_port}:{default_port}"]


def test_durations_read_as_compose_does() -> None:
    assert duration_s("1m30s") == 90
    assert duration_s("500ms") == 0.5
    with pytest.raises(ValueError, match="duration"):
        duration_s("45")


# -- the mechanism the password fix relies on, against the real PostgreSQL -------------------------


@pytest.mark.integration
async def test_the_services_database_driver_logs_in_with_pgpassword(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """publisher and counter get a URL without a password and PGPASSWORD beside it: asyncpg
    logs in with PGPASSWORD, and without it (nor a ~/.pgpass) it cannot."""
    parts = urlsplit(stack.postgres_dsn)
    assert parts.username, "the stack's DSN names the user"
    assert parts.password, "the stack's DSN carries the password"
    bare = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.netloc.rpartition('@')[2]}"))
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
        await asyncpg.connect(bare)

    monkeypatch.setenv("PGPASSWORD", unquote(parts.password))
    connection = await asyncpg.connect(bare)
    try:
        assert await connection.fetchval("SELECT current_user") == unquote(parts.username)
    finally:
        await connection.close()
