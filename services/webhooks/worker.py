"""The dispatcher: the intake fills the delivery log, senders empty it.

Guarantee (the intake's half is in services/webhooks/intake.py):
- **At least once.** A delivery is leased before it is sent (its `next_attempt_at` moves to
  the lease's end, services/webhooks/repository.py `claim`), and its result is written
  after the receiver answered. A sender that dies in between leaves the lease to run out,
  and the delivery goes out again: a receiver may see one `webhook-id` twice, never none.
- **In order per customer within a subscription.** Only a lane's head is claimed, and the
  lane moves on only when the head is delivered or has failed for good, in the transaction
  that records it. A failing delivery for customer X holds back X's later deliveries for
  that subscription, and nobody else's.
- **Retries** follow shared/webhooks/schedule.py: exponential backoff with full jitter,
  until the delivery's deadline: 24 h by default from when it became its lane's head. A
  delivery that exhausts it, that was answered 410, or whose subscription was disabled is
  kept as failed, and can be replayed.
- **Several dispatchers** can run: claims use FOR UPDATE SKIP LOCKED, and a result whose
  lease was lost meanwhile is logged as an attempt without changing the delivery.
- A subscription whose attempts fail for `disable_after_seconds` and at least
  `disable_after_failures` times in a row, or that answered 410, is disabled, with the
  reason in its state and `streamseg_webhooks_subscriptions_disabled_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import asyncpg
import httpx
import structlog
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import AsyncEngine

from services.webhooks import repository as repo
from services.webhooks.client import Clients, refusal
from services.webhooks.intake import Intake
from services.webhooks.metrics import WebhooksMetrics
from services.webhooks.settings import WebhooksSettings
from shared.db.engine import pg_connection
from shared.retry import Backoff, Retry, is_retriable, repeat_until_stopped
from shared.webhooks.signing import secret_key, webhook_headers

log = structlog.get_logger("webhooks")

DB_BACKOFF = Backoff(0.1, 5.0)
PRUNE_BATCH = 5000


class Dispatcher:
    """Supervises the intake, the claim and flush loops of the sender, and maintenance.
    `run()` returns after `stop()` once in-flight deliveries are recorded, or raises the
    first fatal error of any loop."""

    def __init__(
        self,
        settings: WebhooksSettings,
        engine: AsyncEngine,
        consumer: AIOKafkaConsumer,
        clients: Clients,
        metrics: WebhooksMetrics,
        owner: str,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clients = clients
        self._metrics = metrics
        self._owner = owner
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._outcome_ready = asyncio.Event()
        self._outcomes: list[repo.Outcome] = []
        self._held = 0  # claimed and not yet recorded
        self._sends: set[asyncio.Task[None]] = set()
        self._keys: dict[str, bytes] = {}
        self.intake = Intake(settings, engine, consumer, metrics, self.wake)
        self.delivered = 0

    def wake(self) -> None:
        """Deliveries became due in this process: claim without waiting for the poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming and reading; safe to call twice or before `run()`."""
        self._stopping.set()
        self._wake.set()
        self._outcome_ready.set()

    @property
    def in_flight(self) -> int:
        return self._held

    async def run(self) -> None:
        children = {
            asyncio.create_task(self._intake_loop(), name="intake_loop"),
            asyncio.create_task(self._claim_loop(), name="claim_loop"),
            asyncio.create_task(self._flush_loop(), name="flush_loop"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance_loop"),
        }
        try:
            done, _ = await asyncio.wait(children, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            # Let the loops end on their own (sends finish, results are written), bounded.
            pending = {t for t in children if not t.done()}
            if pending:
                await asyncio.wait(pending, timeout=self._settings.request_timeout_seconds + 5)
            for task in children | self._sends:
                task.cancel()
            await asyncio.gather(*children, *self._sends, return_exceptions=True)

    # Intake ---------------------------------------------------------------------------------
    async def _intake_loop(self) -> None:
        retry = Retry(DB_BACKOFF, "webhooks.intake", self._stopping)
        while not self._stopping.is_set():
            try:
                await self.intake.run(self._stopping)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                await self.intake.rewind()
                await retry.pause(exc)

    # Sender ---------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        retry = Retry(DB_BACKOFF, "webhooks.claim", self._stopping)
        poll = self._settings.idle_poll_ms / 1000
        while not self._stopping.is_set():
            want = min(self._settings.max_in_flight - self._held, self._settings.claim_batch_size)
            got = 0
            self._wake.clear()
            if want > 0:
                try:
                    got = await self._claim(want)
                    retry.succeeded()
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    await retry.pause(exc)
                    continue
            if want > 0 and got == want:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)

    async def _claim(self, limit: int) -> int:
        now = datetime.now(UTC)
        lease_until = now + timedelta(seconds=self._settings.lease_seconds)
        async with pg_connection(self._engine) as conn, conn.transaction():
            claimed = await repo.claim(conn, self._owner, now, lease_until, limit)
            found = await repo.targets(conn, [c.subscription_id for c in claimed], now)
        self._held += len(claimed)
        self._metrics.in_flight.set(self._held)
        for delivery in claimed:
            task = asyncio.create_task(self._send(delivery, found.get(delivery.subscription_id)))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        return len(claimed)

    async def _send(self, delivery: repo.Claimed, target: repo.Target | None) -> None:
        if target is None:  # the subscription was deleted, and its log with it
            self._held -= 1
            self._outcome_ready.set()
            return
        attempt = delivery.attempts + 1
        timestamp = int(time.time())
        headers = webhook_headers(
            [self._key(s) for s in target.secrets], delivery.event_id, timestamp, delivery.payload
        )
        headers["content-type"] = "application/json"
        code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        result = "success"
        started = time.perf_counter()
        try:
            async with (
                self._clients.connection(target.url) as client,
                client.stream(
                    "POST", target.url, content=delivery.payload, headers=headers
                ) as response,
            ):
                code = response.status_code
                retry_after = _retry_after(response.headers.get("retry-after"))
                await _drain(response, self._settings.max_response_bytes)
        except httpx.TimeoutException as exc:
            result, error = "timeout", f"timeout: {type(exc).__name__}"
        except httpx.HTTPError as exc:
            reason = refusal(exc)
            if reason is not None:
                result, error = "refused", f"refused: {reason}"
            else:
                result, error = "connect_error", f"{type(exc).__name__}: {exc}"[:500]
        except Exception as exc:
            # Anything else the client raises (a protocol error, a closed stream) is a failed
            # attempt too: every claimed delivery ends in an outcome, or its slot would leak.
            log.warning("attempt_failed_unexpectedly", delivery_id=delivery.id, error=repr(exc))
            result, error = "connect_error", f"{type(exc).__name__}: {exc}"[:500]
        latency_ms = (time.perf_counter() - started) * 1000
        self._metrics.attempt_seconds.observe(latency_ms / 1000)
        now = datetime.now(UTC)
        is_success = code is not None and 200 <= code < 300
        is_gone = code == 410
        if code is not None and not is_success:
            result = "gone" if is_gone else "http_error"
        self._metrics.attempts.labels(result).inc()
        if is_success:
            state, next_at, reason_failed = "delivered", None, None
        elif is_gone:
            state, next_at, reason_failed = "failed", None, "gone"
        else:
            next_at = self._settings.schedule.next_attempt_at(
                attempt, now, delivery.deadline_at, retry_after_seconds=retry_after
            )
            state = "pending" if next_at is not None else "failed"
            reason_failed = None if next_at is not None else "exhausted"
        if is_success and delivery.event_time is not None:
            self._metrics.event_to_delivery.observe((now - delivery.event_time).total_seconds())
        self._outcomes.append(
            repo.Outcome(
                delivery.id,
                delivery.subscription_id,
                attempt,
                now,
                code,
                error,
                latency_ms,
                state,
                next_at,
                reason_failed,
                is_success,
                is_gone,
            )
        )
        self._outcome_ready.set()

    def _key(self, secret: str) -> bytes:
        key = self._keys.get(secret)
        if key is None:
            key = self._keys[secret] = secret_key(secret)
        return key

    async def _flush_loop(self) -> None:
        retry = Retry(DB_BACKOFF, "webhooks.flush")
        interval = self._settings.flush_interval_ms / 1000
        while not (self._stopping.is_set() and self._held == 0 and not self._outcomes):
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            if not self._outcomes:
                if self._stopping.is_set():
                    # Sends still running: their results come; wait for them.
                    await asyncio.sleep(0.05)
                continue
            if interval:
                await asyncio.sleep(interval)  # gather the results of a burst
            batch, self._outcomes = self._outcomes, []
            while True:
                try:
                    await self._record(batch)
                    retry.succeeded()
                    break
                except (asyncpg.ForeignKeyViolationError, asyncpg.DeadlockDetectedError) as exc:
                    await retry.pause(exc)  # a subscription deleted meanwhile; a lock cycle
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    await retry.pause(exc)
            self._held -= len(batch)
            self._metrics.in_flight.set(self._held)
            self._wake.set()  # slots are free, and lanes may have moved on

    async def _record(self, outcomes: list[repo.Outcome]) -> None:
        now = datetime.now(UTC)
        successes: Counter[uuid.UUID] = Counter()
        failures: Counter[uuid.UUID] = Counter()
        for o in outcomes:
            (successes if o.is_success else failures)[o.subscription_id] += 1
        settings = self._settings
        async with pg_connection(self._engine) as conn, conn.transaction():
            await repo.record(conn, self._owner, outcomes, now, settings.schedule.deadline(now))
            failing = await repo.update_health(
                conn,
                dict(successes),
                dict(failures),
                now,
                disable_after_failures=settings.disable_after_failures,
                disable_after_seconds=settings.disable_after_seconds,
            )
            gone = await repo.disable(
                conn,
                sorted({o.subscription_id for o in outcomes if o.is_gone}),
                "gone: the target answered 410 Gone",
                now,
            )
            failed = await repo.disable(
                conn,
                failing,
                f"failing: every attempt failed for {settings.disable_after_seconds:g} s "
                f"and at least {settings.disable_after_failures} times in a row",
                now,
            )
        for o in outcomes:
            if o.state != "pending":
                self._metrics.finished.labels(o.state).inc()
        self.delivered += sum(successes.values())
        for reason, ids in (("gone", gone), ("failing", failed)):
            if ids:
                self._metrics.disabled.labels(reason).inc(len(ids))
                log.warning(
                    "subscriptions_disabled", reason=reason, subscriptions=[str(i) for i in ids]
                )

    # Maintenance ----------------------------------------------------------------------------
    async def _maintenance_loop(self) -> None:
        await repeat_until_stopped(
            self._maintain,
            self._settings.maintenance_interval_seconds,
            self._stopping,
            Retry(DB_BACKOFF, "webhooks.maintenance", self._stopping),
        )

    async def _maintain(self) -> None:
        now = datetime.now(UTC)
        before = now - timedelta(hours=self._settings.delivered_retention_hours)
        while True:
            async with pg_connection(self._engine) as conn, conn.transaction():
                pruned = await repo.prune_delivered(conn, before, PRUNE_BATCH)
            if pruned < PRUNE_BATCH or self._stopping.is_set():
                break
        async with pg_connection(self._engine) as conn, conn.transaction():
            await repo.forget_expired_secrets(conn, now)
            self._metrics.disabled_now.set(await repo.disabled_count(conn))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        return None
    return max(0.0, (at - datetime.now(UTC)).total_seconds())


async def _drain(response: httpx.Response, limit: int) -> None:
    """Read the answer up to `limit` bytes (what keeps the connection reusable), no more."""
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen > limit:
            break
