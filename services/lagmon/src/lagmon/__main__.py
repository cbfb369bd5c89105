"""`python -m lagmon [serve]` serves the page, the API and /metrics while sampling;
`python -m lagmon status [--json] [--watch SECONDS] [--server URL]` prints the lag table."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from lagmon.app import create_app
from lagmon.cli import add_arguments, status_main
from lagmon.settings import Settings
from service_kit import kafka_clients
from service_kit.logs import configure_logging
from service_kit.serving import run_http_service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lagmon")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the page, /api/lag, /metrics (default)")
    add_arguments(commands.add_parser("status", help="print every group's lag and status"))
    args = parser.parse_args(argv)
    command = args.command or "serve"
    if command == "status" and args.server:
        return status_main(args, None)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"lagmon: invalid configuration (LAGMON_* environment):\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level if command == "serve" else "WARNING")
    # Every Kafka client of this process logs in as this service's own user.
    kafka_clients.configure(settings.kafka_security())
    if command == "status":
        return status_main(args, settings)
    run_http_service(create_app(settings), settings.host, settings.port, graceful_timeout_s=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
