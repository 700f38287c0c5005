"""`python -m services.loadgen`: stream realistic shopper behaviour into Kafka.

Browsing, carts, orders, refunds and cancellations from customers of skewed popularity;
a share of customers goes quiet, so that time-driven segments (at risk, dormant) appear
too. Events carry the time they are sent, so segments move live.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import structlog
import typer

from shared.events import encode_event
from shared.events.orders import ORDER_EVENT_CLASSES
from shared.kafka import TopicSpec, ensure_topics, make_producer
from shared.logging import configure_logging
from shared.security import KafkaSecurity
from shared.settings import ConnectionSettings
from shared.workload import Workload

log = structlog.get_logger("loadgen")
cli = typer.Typer(add_completion=False, help=__doc__)


async def run(
    bootstrap: str,
    security: KafkaSecurity,
    orders_topic: str,
    interactions_topic: str,
    rate: float,
    customers: int,
    duration: float | None,
    seed: int,
    history_days: float,
) -> int:
    await ensure_topics(
        bootstrap, [TopicSpec(orders_topic), TopicSpec(interactions_topic)], security=security
    )
    now = datetime.now(UTC)
    # History first: a backlog of past behaviour, so lifecycle stages and value tiers are
    # populated from the start (customers last seen long ago are already at risk).
    history = Workload(
        seed=seed,
        customers=customers,
        start=now - timedelta(days=history_days),
        end=now - timedelta(minutes=1),
    )
    live = Workload(
        seed=seed + 1, customers=max(1, customers // 2), start=now - timedelta(days=1), end=now
    )
    producer = make_producer(bootstrap, security=security, client_id="loadgen")
    await producer.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    sent = 0
    try:
        for ev in history.events(customers * 3):
            topic = orders_topic if isinstance(ev, ORDER_EVENT_CLASSES) else interactions_topic
            await producer.send(topic, encode_event(ev), key=ev.customer_id.encode())
            sent += 1
        log.info("history_sent", events=sent, customers=customers)
        started = time.monotonic()
        live_sent = 0
        while not stopping.is_set() and (duration is None or time.monotonic() - started < duration):
            due = int((time.monotonic() - started) * rate)
            while live_sent < due:
                ev = live.event_at(datetime.now(UTC))
                topic = orders_topic if isinstance(ev, ORDER_EVENT_CLASSES) else interactions_topic
                await producer.send(topic, encode_event(ev), key=ev.customer_id.encode())
                live_sent += 1
            if live_sent and live_sent % max(1, int(rate * 10)) == 0:
                log.info("live", events=live_sent)
            await asyncio.sleep(0.01)
        sent += live_sent
        await producer.flush()
    finally:
        await producer.stop()
    log.info("loadgen_stopped", events=sent)
    return sent


@cli.command()
def main(
    rate: Annotated[float, typer.Option(help="live events per second", min=0)] = 50.0,
    customers: Annotated[int, typer.Option(help="customers in the population", min=1)] = 2000,
    duration: Annotated[
        float | None, typer.Option(help="seconds of live traffic; none: until Ctrl-C")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same seed, the same events")] = 1,
    history_days: Annotated[float, typer.Option(help="days of past behaviour sent first")] = 400.0,
    orders_topic: Annotated[str, typer.Option(envvar="STREAMSEG_INGEST_ORDERS_TOPIC")] = "orders",
    interactions_topic: Annotated[
        str, typer.Option(envvar="STREAMSEG_INGEST_INTERACTIONS_TOPIC")
    ] = "interactions",
) -> None:
    """Send a history of past behaviour, then live events at RATE per second."""
    conn = ConnectionSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    asyncio.run(
        run(
            conn.kafka_bootstrap,
            conn.kafka_security(),
            orders_topic,
            interactions_topic,
            rate,
            customers,
            duration,
            seed,
            history_days,
        )
    )


if __name__ == "__main__":
    cli()
