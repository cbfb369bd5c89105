"""`python -m publisher [serve | migrate | create-author --name N | revoke-token --token T |
topics apply [--dry-run]]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import asyncpg

from publisher.app import MIGRATIONS_DIR, SCHEMA, create_app
from publisher.auth import create_author, revoke_token
from publisher.settings import PublisherSettings
from service_kit.logs import configure_logging
from service_kit.migrations import apply_migrations
from service_kit.serving import run_http_service
from service_kit.topics import default_topics_file, topics_command


def serve(settings: PublisherSettings) -> int:
    run_http_service(create_app(settings), settings.host, settings.port, graceful_timeout_s=20)
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
    return 0 if revoked else 1


def main(argv: list[str] | None = None) -> int:
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
    commands.add_parser("topics", help="topics apply [--dry-run]: reconcile the team's topics")
    args = parser.parse_args(argv)

    settings = PublisherSettings()  # fields come from the environment
    configure_logging(settings.log_level)
    if args.command in (None, "serve"):
        return serve(settings)
    if args.command == "migrate":
        return asyncio.run(migrate(settings))
    if args.command == "create-author":
        name = args.name.strip()
        if not 1 <= len(name) <= 200:
            parser.error("--name must be 1..200 characters")
        return asyncio.run(create_author_command(settings, name))
    return asyncio.run(revoke_token_command(settings, args.token))


if __name__ == "__main__":
    sys.exit(main())
