"""Probes and metrics: `/healthz` (alive: 503 once the relay task died), `/readyz` (PostgreSQL
answers; Kafka reported only), `/metrics` (Prometheus; samples the outbox)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from publisher.dependencies import RuntimeDep
from publisher.errors import DATABASE_ERRORS
from service_kit import tracing

log = logging.getLogger(__name__)

router = APIRouter(tags=["ops"])

KAFKA_PROBE_TIMEOUT_S = 2.0


@router.get(
    "/healthz",
    responses={503: {"description": "Not alive: the relay task died (restart the process)"}},
)
async def healthz(rt: RuntimeDep) -> JSONResponse:
    """Alive = the process can do its work: its relay task (when enabled) still runs. Its
    dependencies are /readyz's business: a database outage is not a reason to restart."""
    died = rt.relay_died
    if died is not None:
        return JSONResponse({"status": "dead", "relay": died}, status_code=503)
    return JSONResponse({"status": "ok"})


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
    # Every replica samples the outbox (a standby too: the backlog shows while no one leads).
    try:
        with tracing.suppressed():  # no trace per scrape
            health = await rt.store.outbox_health()
    except DATABASE_ERRORS as exc:
        rt.metrics.outbox_sample_failures.inc()
        log.debug("outbox sample failed: %r", exc)
    else:
        rt.metrics.outbox_unsent_rows.set(health.unsent)
        rt.metrics.outbox_oldest_unsent_age.set(health.oldest_unsent_age_s)
        rt.metrics.outbox_parked_rows.set(health.parked)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
