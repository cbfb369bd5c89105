"""The Kafka clients' security options, decided in one place (service_kit.kafka_clients)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from service_kit import kafka_clients
from service_kit.kafka_clients import KafkaSecurity, stack_security
from service_kit.settings import KafkaClientSettings


class CounterSettings(KafkaClientSettings):
    model_config = SettingsConfigDict(env_prefix="COUNTER_", extra="ignore", frozen=True)


@pytest.fixture(autouse=True)
def _unconfigured() -> Iterator[None]:
    kafka_clients.configure(None)
    yield
    kafka_clients.configure(None)


def test_plaintext_by_default() -> None:
    assert KafkaSecurity().options() == {"security_protocol": "PLAINTEXT"}
    assert stack_security({}).options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_options_carry_the_users_login() -> None:
    security = KafkaSecurity(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="counter",
        sasl_password=SecretStr("s3cret"),
    )
    assert security.options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "counter",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(security)


def test_sasl_without_a_login_is_refused() -> None:
    with pytest.raises(ValidationError, match="SASL_PLAINTEXT needs sasl_username, sasl_password"):
        KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512")


def test_a_configured_identity_wins_over_the_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOG_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("BLOG_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("BLOG_KAFKA_SASL_USERNAME", "admin")
    monkeypatch.setenv("BLOG_KAFKA_SASL_PASSWORD", "admin-pw")
    assert kafka_clients.client_options()["sasl_plain_username"] == "admin"
    monkeypatch.setenv("COUNTER_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("COUNTER_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("COUNTER_KAFKA_SASL_USERNAME", "counter")
    monkeypatch.setenv("COUNTER_KAFKA_SASL_PASSWORD", "counter-pw")
    settings = CounterSettings()
    kafka_clients.configure(settings.kafka_security())
    options = kafka_clients.client_options()
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "counter",
        "counter-pw",
    )
