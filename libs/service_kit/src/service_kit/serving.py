"""Running a service's FastAPI app: one way for every service, so SIGTERM means the same thing."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import uvicorn
from starlette.types import ASGIApp


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def run_http_service(app: ASGIApp, host: str, port: int, graceful_timeout_s: int = 25) -> None:
    """Serve `app` until SIGINT/SIGTERM, then shut down gracefully (the lifespan stops the
    consumer or relay: the batch in hand finishes and is committed, the group is left).

    uvicorn handles SIGTERM itself and afterwards re-raises it with the previous handler
    restored; installing a handler that exits 0 first makes status 0 mean "stopped cleanly"
    instead of -15 (what orchestrators read as a crash)."""
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,  # keep service_kit.logs' format
        timeout_graceful_shutdown=graceful_timeout_s,
        # uvloop + httptools when installed (uvicorn[standard]); the defaults otherwise.
        loop="auto",
        http="auto",
    )
