"""Property-based fuzzing of the whole OpenAPI surface with schemathesis: valid and invalid
inputs for every operation, with a valid token, against the app in-process (ASGI) and a real
PostgreSQL. Zero server errors allowed, and every answer must match the documented statuses,
content types and schemas."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from blog_testkit import Stack
from publisher.app import MIGRATIONS_DIR, SCHEMA, create_app
from publisher.settings import PublisherSettings
from service_kit.migrations import apply_migrations

from .conftest import Author, draft, new_author

pytestmark = pytest.mark.integration

# Bounded so the run stays well under two minutes (each example is one in-process request).
EXAMPLES_PER_STRATEGY = 150
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

# Invalid input must be refused with a 4xx; 413 (an invalid body can also be a huge one) is a
# refusal too, missing from schemathesis's default list.
FUZZ_CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 412, 413, 415, 422, 429]
            }
        }
    }
)


def fuzz(app: Any, author: Author, own_blog: str, others_blog: str) -> int:
    """Run the fuzzer; returns the number of requests made (raises on the first failure)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=FUZZ_CONFIG)
    strategies = [schema.as_strategy(mode) for mode in GenerationMode]
    # Random ids almost always hit 404: also aim at a real blog of the token's author (202s)
    # and at another author's blog (403s).
    for path in ("/blogs/{blog_id}", "/blogs/{blog_id}/status"):
        for operation in schema[path].values():
            strategies += [
                operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"blog_id": blog_id})
                for blog_id in (own_blog, others_blog)
            ]
    calls = 0

    @settings(
        max_examples=EXAMPLES_PER_STRATEGY * len(strategies),
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def check(case: schemathesis.Case[Any]) -> None:
        nonlocal calls
        calls += 1
        case.call_and_validate(headers=author.headers, checks=CHECKS)

    check()
    return calls


async def test_fuzzing_finds_no_server_error(stack: Stack, database_url: str, topic: str) -> None:
    await apply_migrations(database_url, SCHEMA, MIGRATIONS_DIR)
    author = await new_author(database_url, "fuzzer")
    other = await new_author(database_url, "other")
    settings_ = PublisherSettings(
        database_url=database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        relay_enabled=False,
        rate_limit_per_s=0,  # the limiter has its own tests; here it would only hide routes
    )
    app = create_app(settings_)
    try:
        own_blog, others_blog = await asyncio.to_thread(seed_blogs, app, author, other)
        calls = await asyncio.to_thread(fuzz, app, author, own_blog, others_blog)
    finally:
        await asyncio.to_thread(asgi.shutdown_lifespans)
    assert calls >= EXAMPLES_PER_STRATEGY


def seed_blogs(app: Any, author: Author, other: Author) -> tuple[str, str]:
    """One blog of each author, posted through schemathesis's ASGI client (the app's lifespan
    runs on schemathesis's event loop thread, so every request must go through it)."""
    ids = []
    with asgi.get_client(app) as client:
        for who in (author, other):
            response = client.post("/blogs", json=draft(), headers=who.headers)
            assert response.status_code == 202, response.text
            ids.append(str(uuid.UUID(response.json()["id"])))
    return ids[0], ids[1]
