"""The API's Prometheus metrics, registered once per process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Sub-millisecond buckets: the cached read is expected to take well under 5 ms.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUEST_SECONDS = Histogram(
    "streamseg_api_request_duration_seconds",
    "Time to answer a request, by route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "streamseg_api_requests_total",
    "Requests answered, by route template and status",
    ["method", "route", "status"],
)
CUSTOMER_READS = Counter(
    "streamseg_api_customer_reads_total",
    "Customers read, by where the answer came from",
    ["source"],
)
CACHE_FAILURES = Counter(
    "streamseg_api_cache_failures_total", "Redis reads that failed or timed out"
)
AUDIT_WRITTEN = Counter("streamseg_api_audit_written_total", "Audit entries inserted")
AUDIT_DROPPED = Counter(
    "streamseg_api_audit_dropped_total", "Audit entries dropped because the buffer was full"
)
EVENTS = Counter(
    "streamseg_api_events_total",
    "Events of POST /v1/events: accepted (Kafka has them), rejected (invalid), or unavailable "
    "(valid, but their batch was refused with 503)",
    ["outcome"],
)
