"""`python -m indexer` serves the API and runs the consumer; `python -m indexer migrate` only
creates the index and its alias (the indexer has no database migrations); `python -m indexer
topics apply [--dry-run]` reconciles the indexer team's topics (its dead-letter and retry topics)
with `services/indexer/topics.yaml`; `python -m indexer redrive [--dry-run] [--max-attempts N]`
moves the group's dead letters to its retry topic (service_kit.redrive); `python -m indexer
verify` compares the documents behind the alias with the log (exit 0 agree, 1 differ);
`python -m indexer rebuild [--rollback | --prune]` builds the next index from the log and swaps
the alias without downtime (`indexer.rebuild`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from elasticsearch import AsyncElasticsearch
from pydantic import ValidationError

from blog_events.fast import FastEnvelope
from indexer.app import create_app
from indexer.index import ensure_index
from indexer.rebuild import main_rebuild
from indexer.settings import IndexerSettings
from indexer.verify import main_verify
from service_kit import kafka_clients
from service_kit.consumer import BatchHandler
from service_kit.logs import configure_logging
from service_kit.redrive import redrive_command
from service_kit.serving import run_http_service, tune_gc
from service_kit.topics import default_topics_file, topics_command
from service_kit.tracing import configure_tracing


async def _migrate(settings: IndexerSettings) -> None:
    es = AsyncElasticsearch(settings.es_url)
    try:
        await ensure_index(es, settings.index_alias, settings.index_name)
    finally:
        await es.close()


def main(
    argv: list[str],
    *,
    wrap_handler: Callable[[BatchHandler[FastEnvelope]], BatchHandler[FastEnvelope]] | None = None,
) -> int:
    """`wrap_handler`: fault injection for tests (`python -m blog_testkit.faults`)."""
    if argv[:1] == ["topics"]:
        return topics_command(
            argv[1:],
            service="indexer",
            default_file=default_topics_file(__file__),
            env_prefix="INDEXER_",
        )
    try:
        settings = IndexerSettings()
    except ValidationError as exc:
        # Fail fast, naming the INDEXER_* variables that are missing or wrong.
        print(f"indexer: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # Every Kafka client of this process logs in as this service's own user.
    kafka_clients.configure(settings.kafka_security())
    if argv == ["migrate"]:
        asyncio.run(_migrate(settings))
        return 0
    if argv[:1] == ["redrive"]:
        return redrive_command(argv[1:], settings, "python -m indexer")
    if argv[:1] == ["verify"]:
        parser = argparse.ArgumentParser(prog="python -m indexer verify")
        parser.add_argument(
            "--settle-timeout",
            type=float,
            default=30.0,
            help="seconds to wait for blogs still in flight in the live group (default 30)",
        )
        parser.add_argument("--index", help="a physical index to check instead of the alias")
        args = parser.parse_args(argv[1:])
        return main_verify(settings, args.settle_timeout, args.index)
    if argv[:1] == ["rebuild"]:
        parser = argparse.ArgumentParser(prog="python -m indexer rebuild")
        what = parser.add_mutually_exclusive_group()
        what.add_argument("--rollback", action="store_true", help="put the previous index back")
        what.add_argument("--prune", action="store_true", help="delete the previous indices")
        parser.add_argument(
            "--swap-lag",
            type=int,
            default=500,
            help="swap once this close (offsets) to the end of the log (default 500)",
        )
        parser.add_argument("--batch", type=int, default=2000, help="records per bulk")
        args = parser.parse_args(argv[1:])
        tune_gc()  # a long, allocation-heavy run, like the service's
        return main_rebuild(
            settings,
            rollback=args.rollback,
            prune=args.prune,
            swap_lag=args.swap_lag,
            batch=args.batch,
        )
    if argv:
        print(
            "usage: python -m indexer [migrate | verify | rebuild | topics apply [--dry-run] | "
            "redrive [--dry-run]]; "
            f"got {' '.join(argv)!r}",
            file=sys.stderr,
        )
        return 2
    configure_tracing("indexer")
    run_http_service(create_app(settings, wrap_handler=wrap_handler), settings.host, settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
