"""The segmenter's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


class SegmenterMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.evaluations = Counter(
            "streamseg_segmenter_evaluations_total", "Customers evaluated", registry=registry
        )
        self.changes = Counter(
            "streamseg_segmenter_changes_total",
            "Segment changes, by dimension and the segment entered",
            ["dimension", "segment"],
            registry=registry,
        )
        self.uncovered = Counter(
            "streamseg_segmenter_uncovered_total",
            "Customers no rule of some dimension matched (a definitions gap)",
            registry=registry,
        )
        self.cache_failures = Counter(
            "streamseg_segmenter_cache_failures_total",
            "Redis writes that failed after commit",
            registry=registry,
        )
        self.population_retries = Counter(
            "streamseg_segmenter_population_retries_total",
            "Batches rolled back because newer population stats were stored meanwhile",
            registry=registry,
        )
        self.definitions_retries = Counter(
            "streamseg_segmenter_definitions_retries_total",
            "Batches rolled back because another definitions version was activated meanwhile",
            registry=registry,
        )
        self.cache_repairs = Counter(
            "streamseg_segmenter_cache_repairs_total",
            "Customers queued for a cache repair: Redis could not mark them stale before commit",
            registry=registry,
        )
        self.evaluation_seconds = Histogram(
            "streamseg_segmenter_batch_seconds",
            "Time to evaluate and commit one batch of customers",
            registry=registry,
        )
        self.lateness = Histogram(
            "streamseg_segmenter_lateness_seconds",
            "From when a customer was due (an event marked it, or its next change time) "
            "to its evaluation, by cause",
            ["cause"],
            buckets=_LATENESS_BUCKETS,
            registry=registry,
        )
        self.backlog = Gauge(
            "streamseg_segmenter_backlog_customers", "Customers due now", registry=registry
        )
        self.backlog_age = Gauge(
            "streamseg_segmenter_backlog_age_seconds",
            "How long the oldest due customer has waited",
            registry=registry,
        )
        self.outbox = Gauge(
            "streamseg_segmenter_outbox_records",
            "Changes committed but not yet acknowledged by Kafka",
            registry=registry,
        )
        self.size_drift = Gauge(
            "streamseg_segmenter_size_drift_customers",
            "At the last recount of segment sizes: how far the folded totals were off, summed "
            "over segments",
            registry=registry,
        )
        self.size_recounts = Counter(
            "streamseg_segmenter_size_recounts_total",
            "Recounts of segment sizes from customer_segments",
            registry=registry,
        )
        self.size_deltas_folded = Counter(
            "streamseg_segmenter_size_deltas_folded_total",
            "Size delta rows folded into the running totals",
            registry=registry,
        )
        self.outbox_age = Gauge(
            "streamseg_segmenter_outbox_age_seconds",
            "How long the oldest change not yet acknowledged by Kafka has waited",
            registry=registry,
        )
        # Bound once: `labels()` on every evaluated customer costs more than the observation.
        self.lateness_by_cause = {c: self.lateness.labels(c) for c in ("event", "time")}
        self.oldest_due_seconds = 0.0
        self.backfill_due = Gauge(
            "streamseg_segmenter_backfill_due_customers",
            "Re-evaluations a definitions activation queued, not yet done",
            registry=registry,
        )
        self.backfill_fed = Counter(
            "streamseg_segmenter_backfill_fed_customers_total",
            "Customers a definitions backfill queued for re-evaluation",
            registry=registry,
        )
        self.published = Counter(
            "streamseg_segmenter_published_total",
            "Segment-change events acknowledged by Kafka",
            registry=registry,
        )

    def record_backlog(
        self, due: int, oldest_due_seconds: float, outbox: int, backfill_due: int = 0
    ) -> None:
        """Gauges for operators; the age is also kept for the readiness check."""
        self.backfill_due.set(backfill_due)
        self.backlog.set(due)
        self.backlog_age.set(oldest_due_seconds)
        self.outbox.set(outbox)
        self.oldest_due_seconds = oldest_due_seconds
