"""Probes and metrics: `/healthz` (alive), `/readyz` (PostgreSQL answers; Kafka reported only),
`/metrics` (Prometheus)."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from publisher.dependencies import RuntimeDep
from publisher.errors import DATABASE_ERRORS

router = APIRouter(tags=["ops"])

KAFKA_PROBE_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: PostgreSQL unreachable (same body)"}},
)
async def readyz(rt: RuntimeDep) -> JSONResponse:
    """Ready = PostgreSQL answers. Kafka is reported only: writes succeed without it."""
    database_ok = True
    try:
        await rt.store.ping()
    except DATABASE_ERRORS:
        database_ok = False
    kafka_ok = await rt.kafka.reachable(KAFKA_PROBE_TIMEOUT_S)
    relay_state = "disabled" if rt.relay is None else "leader" if rt.relay.is_leader else "standby"
    return JSONResponse(
        {
            "status": "ready" if database_ok else "unready",
            "database": "ok" if database_ok else "unreachable",
            "kafka": "ok" if kafka_ok else "unreachable",
            "relay": relay_state,
        },
        status_code=status.HTTP_200_OK if database_ok else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(rt: RuntimeDep) -> Response:
    with contextlib.suppress(*DATABASE_ERRORS):
        unsent, parked = await rt.store.outbox_counts()
        rt.metrics.outbox_unsent_rows.set(unsent)
        rt.metrics.outbox_parked_rows.set(parked)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
