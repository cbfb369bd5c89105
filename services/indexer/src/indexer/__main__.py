"""`python -m indexer` serves the API and runs the consumer; `python -m indexer migrate` only
creates the index and its alias (the indexer has no database migrations)."""

from __future__ import annotations

import asyncio
import signal
import sys
from types import FrameType

import uvicorn
from elasticsearch import AsyncElasticsearch
from pydantic import ValidationError

from indexer.app import create_app
from indexer.index import ensure_index
from indexer.settings import IndexerSettings
from service_kit.logs import configure_logging


async def _migrate(settings: IndexerSettings) -> None:
    es = AsyncElasticsearch(settings.es_url)
    try:
        await ensure_index(es, settings.index_alias, settings.index_name)
    finally:
        await es.close()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str]) -> int:
    try:
        settings = IndexerSettings()
    except ValidationError as exc:
        # Fail fast, naming the INDEXER_* variables that are missing or wrong.
        print(f"indexer: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if argv == ["migrate"]:
        asyncio.run(_migrate(settings))
        return 0
    if argv:
        print(f"usage: python -m indexer [migrate]; got {' '.join(argv)!r}", file=sys.stderr)
        return 2
    # uvicorn handles SIGTERM itself (graceful shutdown: the consumer finishes and commits its
    # batch), then re-raises the signal with the previous handler restored. This handler turns
    # that re-raise into exit status 0, so "0" means "drained and stopped cleanly".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the logging configured above
        timeout_graceful_shutdown=25,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
