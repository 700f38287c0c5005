"""The webhook dispatcher's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class WebhooksMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.enqueued = Counter(
            "streamseg_webhooks_enqueued_total",
            "Deliveries written to the log by the intake, by state (pending, failed: the "
            "subscription was disabled)",
            ["state"],
            registry=registry,
        )
        self.skipped = Counter(
            "streamseg_webhooks_skipped_records_total",
            "Change-topic records no subscription is sent, by reason (undecodable, type)",
            ["reason"],
            registry=registry,
        )
        self.attempts = Counter(
            "streamseg_webhooks_attempts_total",
            "HTTP attempts, by result (success, http_error, gone, timeout, connect_error, refused)",
            ["result"],
            registry=registry,
        )
        self.finished = Counter(
            "streamseg_webhooks_deliveries_total",
            "Deliveries that ended, by outcome (delivered, failed)",
            ["outcome"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "streamseg_webhooks_attempt_seconds",
            "Time from sending a delivery to the receiver's answer",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.event_to_delivery = Histogram(
            "streamseg_webhooks_event_to_delivery_seconds",
            "Time from a change's evaluation to its successful delivery",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600),
            registry=registry,
        )
        self.in_flight = Gauge(
            "streamseg_webhooks_in_flight", "Deliveries being sent now", registry=registry
        )
        self.disabled = Counter(
            "streamseg_webhooks_subscriptions_disabled_total",
            "Subscriptions the dispatcher disabled, by reason (failing, gone)",
            ["reason"],
            registry=registry,
        )
        self.disabled_now = Gauge(
            "streamseg_webhooks_disabled_subscriptions",
            "Subscriptions that are disabled, as of the last maintenance pass",
            registry=registry,
        )
