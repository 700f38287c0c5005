"""Ingest's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "streamseg_ingest_events_total",
            "Events consumed, by outcome (applied, duplicate)",
            ["outcome"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "streamseg_ingest_dead_lettered_total",
            "Records sent to a dead-letter topic, by source topic and reason",
            ["topic", "reason"],
            registry=registry,
        )
        self.fenced = Counter(
            "streamseg_ingest_fenced_batches_total",
            "Batches refused because another worker owned the partition",
            registry=registry,
        )
        self.rewound = Counter(
            "streamseg_ingest_rewound_partitions_total",
            "Partitions read again from their stored offsets, which were behind the batch "
            "(batches PostgreSQL lost in a crash)",
            registry=registry,
        )
        self.prunes = Counter(
            "streamseg_ingest_prunes_total",
            "Runs of the job that forgets event ids past the dedup window and old interactions",
            registry=registry,
        )
        self.lag = Gauge(
            "streamseg_ingest_lag_records",
            "Records waiting per owned partition",
            ["topic", "partition"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "streamseg_ingest_batch_seconds",
            "Time to apply one batch, commit included",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )

    def observe_batch(self, applied: int, duplicates: int, seconds: float) -> None:
        self.events.labels("applied").inc(applied)
        self.events.labels("duplicate").inc(duplicates)
        self.batch_seconds.observe(seconds)
