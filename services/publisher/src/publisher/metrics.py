"""Prometheus metrics of one app instance, in its own registry (tests run several apps in one
process, and a shared default registry would refuse the duplicates)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The `reason` label of publisher_relay_send_failures_total: a fixed set
# (relay.send_failure_reason).
SEND_FAILURE_REASONS = (
    "kafka_unreachable",  # no broker answers, no partition leader reachable
    "timeout",  # Kafka did not answer in time
    "topic_missing",  # the topic does not exist (yet)
    "not_enough_replicas",  # fewer in-sync replicas than min.insync.replicas
    "authorization",  # credentials or ACLs refused
    "record_refused",  # one record refused for good (too large, invalid): parked
    "other",
)


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
        # The outbox gauges are sampled at scrape by every replica, leader or not, from the same
        # table: the alerts take the max over replicas, and a standby still tells the backlog
        # when the leader is gone.
        self.outbox_unsent_rows = Gauge(
            "publisher_outbox_unsent_rows",
            "Outbox rows not yet relayed to Kafka, parked rows excluded (sampled at scrape)",
            registry=self.registry,
        )
        self.outbox_oldest_unsent_age = Gauge(
            "publisher_outbox_oldest_unsent_age_seconds",
            "Age of the oldest outbox row not yet relayed (0 when none; sampled at scrape)",
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
            "Failed attempts to get outbox rows into Kafka (a batch, a producer start, a topic "
            "check; retried with backoff), and rows refused for good (parked), by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in SEND_FAILURE_REASONS:  # every series exists from the start (rate() works)
            self.relay_send_failures.labels(reason=reason)
        self.relay_is_leader = Gauge(
            "publisher_relay_leader",
            "1 while this replica holds the relay lock (0 on a standby)",
            registry=self.registry,
        )
        self.relay_leadership_lost = Counter(
            "publisher_relay_leadership_lost",
            "Times this replica lost the relay lock while leading (its lock session ended)",
            registry=self.registry,
        )
        self.outbox_sample_failures = Counter(
            "publisher_outbox_sample_failures",
            "Scrapes whose outbox sample failed (the outbox gauges keep their last values)",
            registry=self.registry,
        )
        self.relay_batch_duration = Histogram(
            "publisher_relay_batch_duration_seconds",
            "Time to send one outbox batch and mark it sent",
            registry=self.registry,
        )
