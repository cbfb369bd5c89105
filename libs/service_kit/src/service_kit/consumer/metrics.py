"""Prometheus metrics of the batch consumer, labelled by consumer `group`."""

from __future__ import annotations

from typing import ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram


class ConsumerMetrics:
    """One instance per registry: constructing it again for the same registry returns the same
    object (a second registration of the same names would be refused by prometheus-client)."""

    # Keyed by id(); the registry is kept alive in the value so that id can never be reused.
    _by_registry: ClassVar[dict[int, tuple[CollectorRegistry, ConsumerMetrics]]] = {}

    events_processed: Counter
    events_failed: Counter
    events_dead_lettered: Counter
    isolations: Counter
    isolation_seconds: Histogram
    batch_size: Histogram
    batch_duration_seconds: Histogram

    def __new__(cls, registry: CollectorRegistry = REGISTRY) -> ConsumerMetrics:
        existing = cls._by_registry.get(id(registry))
        if existing is not None:
            return existing[1]
        self = super().__new__(cls)
        self.events_processed = Counter(
            "blog_consumer_events_processed",
            "Events whose batch was handled successfully (effect durable).",
            ["group"],
            registry=registry,
        )
        self.events_failed = Counter(
            "blog_consumer_events_failed",
            "Events in handler calls that raised (counted once per failed attempt).",
            ["group"],
            registry=registry,
        )
        self.events_dead_lettered = Counter(
            "blog_consumer_events_dead_lettered",
            "Records sent to the dead-letter topic (undecodable, or failing in the handler).",
            ["group"],
            registry=registry,
        )
        self.isolations = Counter(
            "blog_consumer_isolations",
            "Batches whose handler failed for a record-level reason, so that the failing "
            "records were isolated (retried alone, then dead-lettered).",
            ["group"],
            registry=registry,
        )
        self.isolation_seconds = Histogram(
            "blog_consumer_isolation_seconds",
            "How long isolating the failing records of a batch held the batch back.",
            ["group"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.batch_size = Histogram(
            "blog_consumer_batch_size",
            "Records per polled batch.",
            ["group"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        )
        self.batch_duration_seconds = Histogram(
            "blog_consumer_batch_duration_seconds",
            "Time from a batch's poll to its offset commit, retries included.",
            ["group"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        cls._by_registry[id(registry)] = (registry, self)
        return self

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        # Everything happens in __new__ (see the class doc).
        pass
