"""docker-compose.yml cannot run on machines without a Docker engine, so at least check that it
defines the servers and services, and that each service is given only settings it really reads."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from counter.settings import Settings as CounterSettings
from indexer.settings import IndexerSettings
from lagmon.settings import Settings as LagmonSettings
from publisher.settings import PublisherSettings

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
SERVICES: dict[str, tuple[str, type[BaseSettings]]] = {
    "publisher": ("PUBLISHER_", PublisherSettings),
    "counter": ("COUNTER_", CounterSettings),
    "indexer": ("INDEXER_", IndexerSettings),
    "lagmon": ("LAGMON_", LagmonSettings),
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_defines_the_three_servers_from_official_images(compose: dict[str, Any]) -> None:
    images = {name: spec.get("image", "") for name, spec in compose["services"].items()}
    assert images["kafka"].startswith("apache/kafka:4.")
    assert images["postgres"].startswith("postgres:")
    assert images["elasticsearch"].startswith("docker.elastic.co/elasticsearch/elasticsearch:8.")
    es_env = compose["services"]["elasticsearch"]["environment"]
    assert es_env["discovery.type"] == "single-node"
    assert es_env["xpack.security.enabled"] == "false"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_is_built_from_its_own_dockerfile(compose: dict[str, Any], service: str) -> None:
    build = compose["services"][service]["build"]
    dockerfile = COMPOSE.parent / build["dockerfile"]
    assert build["dockerfile"] == f"services/{service}/Dockerfile"
    text = dockerfile.read_text()
    assert "USER " in text, f"{dockerfile} must run as a non-root user"
    assert text.count("FROM ") >= 2, f"{dockerfile} must be a multi-stage build"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_env_names_only_settings_it_reads(compose: dict[str, Any], service: str) -> None:
    prefix, settings_class = SERVICES[service]
    env = compose["services"][service]["environment"]
    known = {prefix + field.upper() for field in settings_class.model_fields}
    unknown = sorted(set(env) - known)
    assert not unknown, f"{service} is given settings it does not read: {unknown}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_port_matches_native_default(compose: dict[str, Any], service: str) -> None:
    prefix, settings_class = SERVICES[service]
    env = compose["services"][service]["environment"]
    default_port = settings_class.model_fields["port"].default
    assert int(env[f"{prefix}PORT"]) == default_port
    assert compose["services"][service]["ports"] == [f"127.0.0.1:{default_port}:{default_port}"]
