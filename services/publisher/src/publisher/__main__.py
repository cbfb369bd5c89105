"""`python -m publisher [serve | migrate | create-author --name N | revoke-token --token T |
outbox list-parked | outbox retry-parked (--id N ... | --all) | topics apply [--dry-run]]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable

import asyncpg
from starlette.types import ASGIApp

from publisher import parking
from publisher.app import MIGRATIONS_DIR, SCHEMA, create_app
from publisher.auth import create_author, revoke_token
from publisher.settings import PublisherSettings
from service_kit import kafka_clients
from service_kit.logs import configure_logging
from service_kit.migrations import apply_migrations
from service_kit.serving import run_http_service
from service_kit.topics import default_topics_file, topics_command
from service_kit.tracing import configure_tracing


def serve(settings: PublisherSettings, wrap_app: Callable[[ASGIApp], ASGIApp] | None = None) -> int:
    app: ASGIApp = create_app(settings)
    if wrap_app is not None:
        app = wrap_app(app)
    run_http_service(app, settings.host, settings.port, graceful_timeout_s=20)
    return 0


async def migrate(settings: PublisherSettings) -> int:
    applied = await apply_migrations(settings.dsn, SCHEMA, MIGRATIONS_DIR)
    print(json.dumps({"applied": applied}))
    return 0


async def create_author_command(settings: PublisherSettings, name: str) -> int:
    await apply_migrations(settings.dsn, SCHEMA, MIGRATIONS_DIR)
    conn = await asyncpg.connect(settings.dsn)
    try:
        author_id, token = await create_author(conn, name)
    finally:
        await conn.close()
    print(json.dumps({"author_id": str(author_id), "token": token}))
    return 0


async def revoke_token_command(settings: PublisherSettings, token: str) -> int:
    conn = await asyncpg.connect(settings.dsn)
    try:
        revoked = await revoke_token(conn, token)
    finally:
        await conn.close()
    print(json.dumps({"revoked": revoked}))
    if revoked and settings.token_cache_ttl_s > 0:
        print(
            f"running publishers refuse it within {settings.token_cache_ttl_s:g} s"
            " (PUBLISHER_TOKEN_CACHE_TTL_S)",
            file=sys.stderr,
        )
    return 0 if revoked else 1


async def list_parked_command(settings: PublisherSettings) -> int:
    conn = await asyncpg.connect(settings.dsn)
    try:
        rows = await parking.list_parked(conn)
    finally:
        await conn.close()
    for row in rows:
        print(json.dumps(row.to_json()))
    print(f"{len(rows)} parked row(s)", file=sys.stderr)
    return 0


async def retry_parked_command(settings: PublisherSettings, ids: list[int] | None) -> int:
    conn = await asyncpg.connect(settings.dsn)
    try:
        retried = await parking.retry_parked(conn, ids)
    finally:
        await conn.close()
    print(json.dumps({"retried": retried}))
    missing = sorted(set(ids or ()) - set(retried))
    if missing:
        print(f"not parked (unknown, already sent or already queued): {missing}", file=sys.stderr)
        return 1
    return 0


def main(
    argv: list[str] | None = None, *, wrap_app: Callable[[ASGIApp], ASGIApp] | None = None
) -> int:
    """`wrap_app`: a seam for tests (fault injection around the ASGI app)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["topics"]:
        # Needs Kafka only (no database settings): the publisher team's topics file.
        return topics_command(
            argv[1:],
            service="publisher",
            default_file=default_topics_file(__file__),
            env_prefix="PUBLISHER_",
        )
    parser = argparse.ArgumentParser(prog="python -m publisher", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP API and the outbox relay (default)")
    commands.add_parser("migrate", help="apply the database migrations and exit")
    create = commands.add_parser("create-author", help="create an author; prints its API token")
    create.add_argument("--name", required=True)
    revoke = commands.add_parser("revoke-token", help="revoke an API token")
    revoke.add_argument("--token", required=True)
    outbox = commands.add_parser("outbox", help="outbox rows the relay parked")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    outbox_commands.add_parser(
        "list-parked", help="print each parked row (id, blog, version, size, reason) as JSON"
    )
    retry = outbox_commands.add_parser(
        "retry-parked", help="put parked rows back in the relay's queue"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="an outbox row id")
    which.add_argument("--all", action="store_true", help="every parked row")
    commands.add_parser("topics", help="topics apply [--dry-run]: reconcile the team's topics")
    args = parser.parse_args(argv)

    settings = PublisherSettings()  # fields come from the environment
    configure_logging(settings.log_level, settings.log_format)
    # Every Kafka client of this process logs in as this service's own user.
    kafka_clients.configure(settings.kafka_security())
    if args.command in (None, "serve"):
        configure_tracing("publisher")
        return serve(settings, wrap_app)
    if args.command == "migrate":
        return asyncio.run(migrate(settings))
    if args.command == "create-author":
        name = args.name.strip()
        if not 1 <= len(name) <= 200:
            parser.error("--name must be 1..200 characters")
        return asyncio.run(create_author_command(settings, name))
    if args.command == "outbox":
        if args.outbox_command == "list-parked":
            return asyncio.run(list_parked_command(settings))
        return asyncio.run(retry_parked_command(settings, None if args.all else args.ids))
    return asyncio.run(revoke_token_command(settings, args.token))


if __name__ == "__main__":
    sys.exit(main())
