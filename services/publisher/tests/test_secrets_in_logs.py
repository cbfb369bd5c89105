"""No secret in the logs: the publisher runs as a real process (uvicorn access log on, DEBUG
level, relay on) through auth failures, writes, rate limiting and a revoked token, and its whole
log output must contain neither an API token nor the database password."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from blog_testkit import ServiceProcess, Stack
from blog_testkit.plugin import ServiceProcessFactory
from publisher.app import MIGRATIONS_DIR, SCHEMA
from publisher.auth import revoke_token
from service_kit.migrations import apply_migrations

from .conftest import draft, new_author

pytestmark = pytest.mark.integration


def publisher_env(stack: Stack, database_url: str, topic: str) -> dict[str, str]:
    return {
        "PUBLISHER_DATABASE_URL": database_url,
        "PUBLISHER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "PUBLISHER_TOPIC": topic,
        "PUBLISHER_LOG_LEVEL": "DEBUG",
        "PUBLISHER_RATE_LIMIT_PER_S": "0.1",
        "PUBLISHER_RATE_LIMIT_BURST": "2",
    }


def read_log(process: ServiceProcess) -> str:
    assert process.log_path is not None
    return Path(process.log_path).read_text(errors="replace")


async def test_tokens_and_database_password_never_reach_the_logs(
    stack: Stack,
    database_url: str,
    topic: str,
    service_processes: ServiceProcessFactory,
) -> None:
    password = urlsplit(database_url).password
    assert password, "the test needs a DSN with a password to look for"
    await apply_migrations(database_url, SCHEMA, MIGRATIONS_DIR)
    author = await new_author(database_url, "logged")
    revoked = await new_author(database_url, "revoked")
    publisher = service_processes(
        "publisher-logs", "publisher", publisher_env(stack, database_url, topic)
    )
    await publisher.start()
    async with httpx.AsyncClient(base_url=publisher.url, timeout=10) as client:
        bearer = {"Authorization": f"Bearer {author.token}"}
        # Auth failures: none, a wrong token, the right token under the wrong scheme, and the
        # database password offered as a token.
        assert (await client.post("/blogs", json=draft())).status_code == 401
        wrong = {"Authorization": f"Bearer {author.token}x"}
        assert (await client.post("/blogs", json=draft(), headers=wrong)).status_code == 401
        basic = {"Authorization": f"Basic {author.token}"}
        assert (await client.post("/blogs", json=draft(), headers=basic)).status_code == 401
        guess = {"Authorization": f"Bearer {password}"}
        assert (await client.delete(f"/blogs/{uuid.uuid4()}", headers=guess)).status_code == 401
        # Writes, then the rate limit (burst 2).
        created = await client.post("/blogs", json=draft(), headers=bearer)
        assert created.status_code == 202
        blog_id = created.json()["id"]
        response = await client.put(f"/blogs/{blog_id}", json=draft("v2"), headers=bearer)
        assert response.status_code == 202
        response = await client.delete(f"/blogs/{blog_id}", headers=bearer)
        assert response.status_code == 429
        # Invalid input with a valid token, and a status read (Kafka offsets).
        response = await client.post("/blogs", content=b"\xff", headers=bearer)
        assert response.status_code == 422
        assert (await client.get(f"/blogs/{blog_id}/status")).status_code == 200
        # A token revoked while the service runs.
        conn = await asyncpg.connect(database_url)
        try:
            assert await revoke_token(conn, revoked.token)
        finally:
            await conn.close()
        gone = {"Authorization": f"Bearer {revoked.token}"}
        assert (await client.post("/blogs", json=draft(), headers=gone)).status_code == 401
    assert await publisher.terminate() == 0

    log = read_log(publisher)
    # The capture works: the access log lines of the requests above are there.
    assert '"POST /blogs HTTP/1.1" 401' in log
    assert '"DELETE /blogs/' in log
    assert " 429" in log
    for secret in (author.token, revoked.token, password, database_url):
        assert secret not in log


async def test_failed_database_login_does_not_log_the_password(
    stack: Stack, database_url: str, topic: str, service_processes: ServiceProcessFactory
) -> None:
    parts = urlsplit(database_url)
    wrong_password = f"not-the-password-{uuid.uuid4().hex}"
    wrong_dsn = parts._replace(
        netloc=f"{parts.username}:{wrong_password}@{parts.hostname}:{parts.port}"
    ).geturl()
    publisher = service_processes(
        "publisher-badlogin", "publisher", publisher_env(stack, wrong_dsn, topic)
    )
    with pytest.raises(AssertionError, match="during startup"):
        await publisher.start()
    log = read_log(publisher)
    assert "password authentication failed" in log  # the failure itself is reported
    assert wrong_password not in log
    assert wrong_dsn not in log
