"""Prometheus metrics of one app instance, in its own registry (tests run several apps in one
process, and a shared default registry would refuse the duplicates)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PublisherMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "publisher_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "publisher_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.rate_limited_writes = Counter(
            "publisher_rate_limited_writes",
            "Writes refused with 429 by the per-author rate limit",
            registry=self.registry,
        )
        self.outbox_unsent_rows = Gauge(
            "publisher_outbox_unsent_rows",
            "Outbox rows not yet relayed to Kafka (sampled at scrape)",
            registry=self.registry,
        )
        self.outbox_parked_rows = Gauge(
            "publisher_outbox_parked_rows",
            "Outbox rows the relay parked: Kafka refused them for good (too large, invalid); "
            "see `python -m publisher outbox list-parked` (sampled at scrape)",
            registry=self.registry,
        )
        self.relay_parked = Counter(
            "publisher_relay_parked",
            "Outbox rows the relay parked since start",
            registry=self.registry,
        )
        self.relay_sent = Counter(
            "publisher_relay_sent",
            "Outbox events delivered to Kafka and marked sent",
            registry=self.registry,
        )
        self.relay_send_failures = Counter(
            "publisher_relay_send_failures",
            "Relay batches that failed to reach Kafka (retried with backoff)",
            registry=self.registry,
        )
        self.relay_is_leader = Gauge(
            "publisher_relay_is_leader",
            "1 while this replica holds the relay lock",
            registry=self.registry,
        )
        self.relay_batch_duration = Histogram(
            "publisher_relay_batch_duration_seconds",
            "Time to send one outbox batch and mark it sent",
            registry=self.registry,
        )
