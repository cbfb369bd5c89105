"""`python -m counter` serves the API and runs the consumer; `python -m counter migrate` only
applies the migrations; `python -m counter topics apply [--dry-run]` reconciles the counter
team's topics (its dead-letter and retry topics) with `services/counter/topics.yaml`;
`python -m counter redrive [--dry-run] [--max-attempts N]` moves the group's dead letters to its
retry topic (service_kit.redrive);
`python -m counter verify` compares the tables with the log (exit 0 agree, 1 differ);
`python -m counter rebuild [--rollback | --prune]` rebuilds them from the log without downtime
(`counter.rebuild`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from pydantic import ValidationError

from blog_events.fast import FastEnvelope
from counter.app import create_app, migrate
from counter.rebuild import main_rebuild
from counter.settings import Settings
from counter.verify import main_verify
from service_kit import kafka_clients
from service_kit.consumer import BatchHandler
from service_kit.logs import configure_logging
from service_kit.redrive import redrive_command
from service_kit.serving import run_http_service, tune_gc
from service_kit.topics import default_topics_file, topics_command
from service_kit.tracing import configure_tracing

# Uvicorn's grace period for in-flight requests on SIGTERM; the consumer's own stop follows in
# the lifespan shutdown.
GRACEFUL_SHUTDOWN_S = 10


def main(
    argv: list[str] | None = None,
    *,
    wrap_handler: Callable[[BatchHandler[FastEnvelope]], BatchHandler[FastEnvelope]] | None = None,
) -> int:
    """`wrap_handler`: fault injection for tests (`python -m blog_testkit.faults`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["topics"]:
        return topics_command(
            argv[1:],
            service="counter",
            default_file=default_topics_file(__file__),
            env_prefix="COUNTER_",
        )
    parser = argparse.ArgumentParser(prog="python -m counter")
    parser.add_argument(
        "command",
        nargs="?",
        choices=["serve", "migrate", "redrive", "verify", "rebuild"],
        default="serve",
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=30.0,
        help="verify: seconds to wait for blogs still in flight in the live group (default 30)",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--rollback", action="store_true", help="rebuild: swap the previous tables back"
    )
    what.add_argument("--prune", action="store_true", help="rebuild: drop the previous tables")
    what.add_argument(
        "--fresh",
        action="store_true",
        help="rebuild: start over instead of resuming an interrupted rebuild",
    )
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "redrive":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"counter: invalid configuration (COUNTER_* environment):\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # Every Kafka client of this process logs in as this service's own user.
    kafka_clients.configure(settings.kafka_security())
    if args.command == "redrive":
        return redrive_command(rest, settings, "python -m counter")
    if args.command == "rebuild":
        tune_gc()  # a long, allocation-heavy run, like the service's
        return main_rebuild(settings, rollback=args.rollback, prune=args.prune, fresh=args.fresh)
    if args.command == "verify":
        return main_verify(settings, args.settle_timeout)
    if args.command == "migrate":
        applied = asyncio.run(migrate(settings))
        print(f"applied: {', '.join(applied)}" if applied else "migrations up to date")
        return 0
    configure_tracing("counter")
    run_http_service(
        create_app(settings, wrap_handler=wrap_handler),
        settings.host,
        settings.port,
        GRACEFUL_SHUTDOWN_S,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
