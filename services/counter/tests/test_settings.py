"""Configuration comes from COUNTER_* variables and fails fast when wrong."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from counter.__main__ import main
from counter.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("COUNTER_"):
            monkeypatch.delenv(name)


def test_defaults_with_only_the_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTER_DATABASE_URL", "postgresql://u@h/db")
    settings = Settings()
    assert settings.database_url == "postgresql://u@h/db"
    assert (settings.topic, settings.dlq_topic) == ("blog-events", "blog-events.counter.dlq")
    assert (settings.group_id, settings.host, settings.port) == ("counter", "127.0.0.1", 8001)
    assert settings.consumer_enabled is True
    assert settings.max_batch == 500
    # Test-only fault injection is not a setting (tests wrap the handler instead).
    assert not hasattr(settings, "crash_after_effect_batches")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTER_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("COUNTER_TOPIC", "t1")
    monkeypatch.setenv("COUNTER_CONSUMER_ENABLED", "false")
    settings = Settings()
    assert settings.dlq_topic == "t1.counter.dlq"
    assert settings.consumer_enabled is False


def test_database_url_is_required() -> None:
    with pytest.raises(ValidationError, match="database_url"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("COUNTER_PORT", "0"), ("COUNTER_MAX_BATCH", "0"), ("COUNTER_CONSUMER_ENABLED", "maybe")],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv("COUNTER_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_main_exits_2_on_bad_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 2
    assert "COUNTER_" in capsys.readouterr().err
