"""Unit tests: configuration from INDEXER_* variables, failing fast on bad values."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from indexer.settings import IndexerSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # `make run`'s INDEXER_PORT and friends may be exported in the shell that runs the tests.
    for name in list(os.environ):
        if name.startswith("INDEXER_"):
            monkeypatch.delenv(name)


def test_defaults_and_derived_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXER_ES_URL", "http://es:9200")
    settings = IndexerSettings()
    assert settings.es_url == "http://es:9200"
    assert (settings.topic, settings.dlq_topic) == ("blog-events", "blog-events.indexer.dlq")
    assert (settings.group_id, settings.index_alias, settings.index_name) == (
        "indexer",
        "blogs",
        "blogs-v1",
    )
    assert (settings.host, settings.port, settings.max_batch) == ("127.0.0.1", 8002, 500)
    assert settings.consumer_enabled is True
    assert not hasattr(settings, "crash_after_effect_batches")  # tests wrap the handler


def test_es_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INDEXER_ES_URL", raising=False)
    with pytest.raises(ValidationError, match="es_url"):
        IndexerSettings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("INDEXER_INDEX_ALIAS", "Blogs"),  # Elasticsearch names are lowercase
        ("INDEXER_PORT", "0"),
        ("INDEXER_MAX_BATCH", "0"),
        ("INDEXER_CONSUMER_ENABLED", "maybe"),
    ],
)
def test_bad_values_fail(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv("INDEXER_ES_URL", "http://es:9200")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        IndexerSettings()
