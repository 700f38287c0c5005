"""One chaos run: services up, traffic and faults for a while, drain, read back, check.

Each run has its own schema, topics, consumer group and Redis key prefix on the private
instances, so runs of one invocation share the instances but never each other's data.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from shared.segmentation import load_definitions
from tests.chaos import checker
from tests.chaos import expected as model
from tests.chaos.nemesis import Nemesis
from tests.chaos.processes import ROOT, Service, Supervisor
from tests.chaos.readback import (
    create_topics,
    customer_of,
    end_offsets,
    free_port,
    read_topic,
)
from tests.chaos.schedule import INGEST_WORKERS, SEGMENTERS, Schedule
from tests.chaos.traffic import CURRENCY_RATES, POISON_KINDS, Traffic
from tests.support.cluster import KafkaCluster
from tests.support.instances import PrivateStack

DEFINITIONS = Path(__file__).resolve().parent / "definitions"


@dataclass
class RunConfig:
    seconds: float
    customers: int = 300
    rate_per_second: float = 40.0
    erase_every_seconds: float = 6.0
    drain_seconds: float = 120.0
    poison_kinds: tuple[str, ...] = POISON_KINDS


@dataclass
class RunResult:
    seed: int
    schedule: Schedule
    faults_done: dict[str, int]
    counts: dict[str, Any]
    mismatches: dict[str, Any]
    directory: Path
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "schedule": self.schedule.as_dict(),
            "faults_done": self.faults_done,
            "counts": self.counts,
            "mismatches": self.mismatches,
            "notes": self.notes,
        }


def _say(message: str) -> None:
    print(f"[chaos {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


class Run:
    def __init__(
        self,
        seed: int,
        schedule: Schedule,
        config: RunConfig,
        stack: PrivateStack,
        cluster: KafkaCluster | None,
        directory: Path,
    ) -> None:
        self.seed, self.schedule, self.config = seed, schedule, config
        self.stack, self.cluster = stack, cluster
        self.directory = directory
        token = uuid.uuid4().hex[:6]
        self.schema = f"chaos_{seed}_{token}"
        self.topic_prefix = f"chaos-{seed}-{token}"
        self.orders_topic = f"{self.topic_prefix}-orders"
        self.interactions_topic = f"{self.topic_prefix}-interactions"
        self.changes_topic = f"{self.topic_prefix}-changes"
        self.bootstrap = cluster.bootstrap if cluster else stack.env["STREAMSEG_KAFKA_BOOTSTRAP"]
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.api_port = free_port()
        url = stack.env["STREAMSEG_DATABASE_URL"]
        self.pg_dsn = url.replace("+asyncpg", "")
        self.notes: list[str] = []

    # ------------------------------------------------------------ environment
    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")}
        env.update(
            STREAMSEG_DATABASE_URL=self.stack.env["STREAMSEG_DATABASE_URL"],
            STREAMSEG_REDIS_URL=self.stack.env["STREAMSEG_REDIS_URL"],
            STREAMSEG_KAFKA_BOOTSTRAP=self.bootstrap,
            STREAMSEG_DATABASE_SCHEMA=self.schema,
            STREAMSEG_REDIS_KEY_PREFIX=f"{self.topic_prefix}:",
            STREAMSEG_LOG_JSON="true",
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def _services(self, definitions: str) -> list[Service]:
        clock = f"fixed:{self.now.isoformat()}"
        rates = json.dumps({k: str(v) for k, v in CURRENCY_RATES.items()})
        out = []
        for i in range(INGEST_WORKERS):
            env = self._env(
                STREAMSEG_INGEST_ORDERS_TOPIC=self.orders_topic,
                STREAMSEG_INGEST_INTERACTIONS_TOPIC=self.interactions_topic,
                STREAMSEG_INGEST_GROUP_ID=f"{self.topic_prefix}-ingest",
                STREAMSEG_INGEST_CLOCK=clock,
                STREAMSEG_INGEST_OPS_PORT="0",
                STREAMSEG_INGEST_CURRENCY_RATES=rates,
                STREAMSEG_INGEST_MAX_BATCH_RECORDS="500",
                # Pruning of remembered event ids every few seconds, not once a minute, so a
                # duplicate sent much later meets a pruned table within a short run.
                STREAMSEG_INGEST_PRUNE_INTERVAL_SECONDS="5",
            )
            out.append(Service(f"ingest-{i}", "services.ingest", env, self._log(f"ingest-{i}")))
        for i in range(SEGMENTERS):
            out.append(
                Service(
                    f"segmenter-{i}",
                    "services.segmenter",
                    self._segmenter_env(definitions),
                    self._log(f"segmenter-{i}"),
                )
            )
        api_env = self._env(STREAMSEG_API_PORT=str(self.api_port), STREAMSEG_API_POOL_SIZE="4")
        out.append(Service("api", "services.api", api_env, self._log("api")))
        return out

    def _segmenter_env(self, definitions: str, population_seconds: float = 10.0) -> dict[str, str]:
        return self._env(
            STREAMSEG_SEGMENTER_CHANGES_TOPIC=self.changes_topic,
            STREAMSEG_SEGMENTER_CLOCK=f"fixed:{self.now.isoformat()}",
            STREAMSEG_SEGMENTER_OPS_PORT="0",
            STREAMSEG_SEGMENTER_DEFINITIONS_PATH=str(DEFINITIONS / f"{definitions}.yaml"),
            STREAMSEG_SEGMENTER_EVALUATORS="2",
            STREAMSEG_SEGMENTER_POPULATION_INTERVAL_SECONDS=str(population_seconds),
            STREAMSEG_SEGMENTER_STATS_REFRESH_SECONDS="2",
        )

    def _log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    # ------------------------------------------------------------ the run
    async def execute(self) -> RunResult:
        # A replay of a seed replaces that seed's logs and results.
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        _say(
            f"run seed={self.seed} schema={self.schema} topics={self.topic_prefix}-* now={self.now}"
        )
        for fault in self.schedule.faults:
            _say(f"  plan {fault.describe()}")
        (self.directory / "schedule.json").write_text(json.dumps(self.schedule.as_dict(), indent=1))
        await create_topics(
            self.bootstrap,
            [
                self.orders_topic,
                self.interactions_topic,
                self.orders_topic + ".dlq",
                self.interactions_topic + ".dlq",
                self.changes_topic,
            ],
            3 if self.cluster else 1,
        )
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shared.db", "upgrade"],
            cwd=ROOT,
            env=self._env(),
            check=True,
            capture_output=True,
        )
        key = await asyncio.to_thread(self._make_key)
        supervisor = Supervisor(self._services("v1"))
        supervisor.start_all()
        api = f"http://127.0.0.1:{self.api_port}"
        await self._wait_api(api)
        traffic = Traffic(
            self.seed,
            self.now,
            self.bootstrap,
            self.orders_topic,
            self.interactions_topic,
            customers=self.config.customers,
            rate_per_second=self.config.rate_per_second,
            erase_every_seconds=self.config.erase_every_seconds,
            poison_kinds=self.config.poison_kinds,
        )

        async def change_definitions() -> None:
            await self._activate(api, key, "v2", rollback_to=None)

        async def rollback_definitions() -> None:
            await self._activate(api, key, "v1", rollback_to=1)

        nemesis = Nemesis(
            self.schedule,
            self.stack,
            self.cluster,
            supervisor,
            change_definitions,
            rollback_definitions,
            _say,
        )
        stopping, faults_over = asyncio.Event(), asyncio.Event()
        started = time.monotonic()
        tasks = [
            asyncio.create_task(supervisor.run(stopping)),
            asyncio.create_task(traffic.produce_loop(faults_over)),
            asyncio.create_task(
                traffic.erase_loop(faults_over, self.pg_dsn, self.schema, api, key)
            ),
        ]
        nemesis_task = asyncio.create_task(nemesis.run(started, faults_over))
        try:
            await asyncio.sleep(self.schedule.seconds)
            faults_over.set()
            await nemesis_task
            await nemesis.settle()
            await asyncio.to_thread(self._restore)
            await asyncio.gather(*tasks[1:])
            _say(
                f"traffic stopped: {len(traffic.journal.sent)} records,"
                f" {len(traffic.journal.erasures)} erasures; draining"
            )
            drained = await self._drain(supervisor)
            observed = await self._observe(api, key)
        finally:
            stopping.set()
            await tasks[0]
            await asyncio.to_thread(supervisor.stop_all)
        return self._check(traffic, nemesis, supervisor, observed, drained)

    async def _activate(self, api: str, key: str, name: str, rollback_to: int | None) -> None:
        """Put tests/chaos/definitions/<name>.yaml in force through the API, as a user would:
        an activation, or a rollback to version `rollback_to`. Faults may be under way, so
        it tries again until the content is in force under a new version; a 409 or a lost
        answer is told apart by reading what is in force."""
        content = (DEFINITIONS / f"{name}.yaml").read_text()
        wanted = load_definitions(content).content_hash
        start = await self._in_force()
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=api, timeout=30, headers=headers) as http:
            for _ in range(120):
                version, content_hash = await self._in_force()
                if content_hash == wanted and version > start[0]:
                    _say(f"  definitions {name} in force as version {version}")
                    return
                body: dict[str, Any] = {"replaces": version, "note": f"chaos {name}"}
                try:
                    if rollback_to is None:
                        answer = await http.post(
                            "/v1/definitions", json=body | {"content": content}
                        )
                    else:
                        answer = await http.post(
                            f"/v1/definitions/{rollback_to}/rollback", json=body
                        )
                    if answer.status_code not in (201, 409, 503):
                        raise RuntimeError(
                            f"activation answered {answer.status_code}: {answer.text}"
                        )
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(1)
        raise RuntimeError(f"definitions {name} could not be activated")

    async def _in_force(self) -> tuple[int, str]:
        rows = await self._sql(
            "SELECT f.version, d.content_hash FROM definitions_in_force f"
            " JOIN segment_definitions d USING (version)"
        )
        return int(rows[0]["version"]), str(rows[0]["content_hash"])

    def _make_key(self) -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.api.keys",
                "create",
                "--name",
                "chaos",
                "--scope",
                "admin",
                "--scope",
                "segments:read",
                "--scope",
                "definitions:write",
            ],
            cwd=ROOT,
            env=self._env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return next(line.split()[1] for line in out.splitlines() if line.startswith("key:"))

    async def _wait_api(self, api: str, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=api, timeout=2) as http:
            while time.monotonic() < deadline:
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        raise TimeoutError(f"the API did not answer on {api}; read {self._log('api')}")

    def _restore(self) -> None:
        """Faults stop: every instance up again."""
        self.stack.up()
        if self.cluster is not None:
            self.cluster.up()

    async def _sql(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        for _ in range(60):
            try:
                conn = await asyncpg.connect(
                    self.pg_dsn, timeout=5, server_settings={"search_path": self.schema}
                )
                try:
                    return list(await conn.fetch(sql, *args))
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, TimeoutError):
                await asyncio.sleep(1)
        raise RuntimeError(f"PostgreSQL did not answer: {sql}")

    async def _drain(self, supervisor: Supervisor) -> dict[str, Any]:
        """Ingest caught up, one population recompute forced, queue and outbox empty."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_seconds
        ends = await end_offsets(self.bootstrap, [self.orders_topic, self.interactions_topic])
        state: dict[str, Any] = {"ingest_caught_up": False, "queue_and_outbox_empty": False}
        while loop.time() < deadline:
            rows = await self._sql("SELECT topic, partition, next_offset FROM ingest_offsets")
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            behind = {k: e - stored.get(k, 0) for k, e in ends.items() if stored.get(k, 0) < e}
            if not behind:
                state["ingest_caught_up"] = True
                break
            state["ingest_behind"] = {f"{t}[{p}]": n for (t, p), n in behind.items()}
            await asyncio.sleep(1)
        _say(f"ingest caught up: {state['ingest_caught_up']} {state.get('ingest_behind', '')}")
        # The forced recompute: the segmenters restart with a short population interval, so
        # the cut-offs are computed from the final facts.
        names = [n for n in supervisor.services if n.startswith("segmenter")]
        supervisor.held.update(names)
        logged = {}
        for n in names:
            s = supervisor.services[n]
            await asyncio.to_thread(s.terminate)
            logged[n] = s.log_path.stat().st_size if s.log_path.exists() else 0
            s.env = self._segmenter_env("v1", population_seconds=1.0)
            s.start()
        supervisor.held.difference_update(names)
        # Each restarted segmenter has finished one recompute once it starts the next (a
        # recompute whose stats come out the same logs nothing else). A fixed wait was not
        # enough on a loaded machine: the processes took 8 s to start, the queue looked
        # quiet before the first recompute, and its changes came during the read-back.
        while loop.time() < deadline + 30:
            if all(
                _recomputes_since(supervisor.services[n].log_path, logged[n]) >= 2 for n in names
            ):
                break
            await asyncio.sleep(0.5)
        else:
            state["forced_recompute_seen"] = False
        quiet = 0
        while loop.time() < deadline + 30:
            rows = await self._sql(
                "SELECT (SELECT count(*) FROM segmentation_queue WHERE due_at <= $1) AS due,"
                " (SELECT count(*) FROM segment_outbox) AS outbox,"
                " (SELECT count(*) FROM definition_backfills WHERE completed_at IS NULL"
                "  AND superseded_by IS NULL) AS backfills",
                self.now,
            )
            state["due"], state["outbox"] = rows[0]["due"], rows[0]["outbox"]
            state["backfills_running"] = rows[0]["backfills"]
            is_quiet = state["due"] == 0 and state["outbox"] == 0
            quiet = quiet + 1 if is_quiet and state["backfills_running"] == 0 else 0
            if quiet >= 3:
                state["queue_and_outbox_empty"] = True
                break
            await asyncio.sleep(1)
        _say(f"drain: {state}")
        return state

    async def _observe(self, api: str, key: str) -> dict[str, Any]:
        """What the pipeline stored, published and serves."""
        obs: dict[str, Any] = {}
        obs["inputs"] = {
            t: await read_topic(self.bootstrap, t)
            for t in (self.orders_topic, self.interactions_topic)
        }
        dead = []
        for t in (self.orders_topic, self.interactions_topic):
            for _, _, _, headers in await read_topic(self.bootstrap, t + ".dlq"):
                h = dict(headers)
                dead.append(
                    (
                        h["streamseg.dlq.source.topic"].decode(),
                        int(h["streamseg.dlq.source.partition"]),
                        int(h["streamseg.dlq.source.offset"]),
                    )
                )
        obs["dead"] = dead
        obs["changes"] = [
            (p, o, v) for p, o, v, _ in await read_topic(self.bootstrap, self.changes_topic)
        ]
        rows = await self._sql("SELECT customer_id, dimension, segment FROM customer_segments")
        segs: dict[str, dict[str, str]] = {}
        for r in rows:
            segs.setdefault(r["customer_id"], {})[r["dimension"]] = r["segment"]
        obs["segments"] = segs
        obs["history"] = [
            dict(r)
            for r in await self._sql(
                "SELECT change_id, customer_id, dimension, from_segment, to_segment, sequence,"
                " reason, definition_version, caused_by_event_at FROM segment_history"
            )
        ]
        obs["definition_version"] = (
            await self._sql("SELECT version AS v FROM definitions_in_force")
        )[0]["v"]
        ids = sorted(
            {c for recs in obs["inputs"].values() for _, _, v, _ in recs if (c := customer_of(v))}
            | set(segs)
        )
        obs["customer_ids"] = ids
        obs["api_cache"] = await self._api_answers(api, key, ids)
        await asyncio.to_thread(self.stack.flush_redis)
        obs["api_database"] = await self._api_answers(api, key, ids)
        return obs

    async def _api_answers(self, api: str, key: str, ids: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            for start in range(0, len(ids), 200):
                chunk = ids[start : start + 200]
                for _ in range(30):
                    try:
                        r = await http.post(
                            "/v1/customers/segments:batch",
                            json={"customer_ids": chunk},
                            headers={"Authorization": f"Bearer {key}"},
                        )
                        if r.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(1)
                else:
                    raise RuntimeError("the API did not answer the batch read")
                for c in r.json()["customers"]:
                    out[c["customer_id"]] = c
        return out

    # ------------------------------------------------------------ checking
    def _check(
        self,
        traffic: Traffic,
        nemesis: Nemesis,
        supervisor: Supervisor,
        obs: dict[str, Any],
        drained: dict[str, Any],
    ) -> RunResult:
        journal = traffic.journal
        records = [(t, p, o, v) for t, recs in obs["inputs"].items() for p, o, v, _ in recs]
        final_phase: dict[str, int] = {}
        for cid, phase, _ in journal.erasures:
            final_phase[cid] = max(final_phase.get(cid, 0), phase + 1)
        findings = checker.Findings()
        # Every acknowledged record must be on the topic (Kafka keeps what it acked).
        on_topic = {(t, p, o) for t, p, o, _ in records}
        for s in journal.sent:
            if (s.topic, s.partition, s.offset) not in on_topic:
                findings.add("acked_input_record_lost", f"{s.topic}[{s.partition}]@{s.offset}")
        phase_of = journal.phase_of()
        for t, p, o, v in records:
            if model.sha(v) not in phase_of:
                findings.add("harness_unknown_record", f"{t}[{p}]@{o}")
        expected = model.expected_state(
            records, phase_of, final_phase, self.now, CURRENCY_RATES, _final_rules(nemesis)
        )
        if not drained.get("ingest_caught_up"):
            findings.add("drain_ingest_stuck", str(drained.get("ingest_behind")))
        if not drained.get("queue_and_outbox_empty"):
            findings.add(
                "drain_queue_or_outbox_not_empty",
                f"due {drained.get('due')}, outbox {drained.get('outbox')}",
            )
        checker.compare_database_segments(findings, expected, obs["segments"])
        checker.compare_api(
            findings, expected, obs["api_cache"], "cache", obs["definition_version"]
        )
        checker.compare_api(
            findings, expected, obs["api_database"], "database", obs["definition_version"]
        )
        sources: dict[str, int] = {}
        for a in obs["api_cache"].values():
            sources[a["source"]] = sources.get(a["source"], 0) + 1
        change_counts = checker.compare_changes(
            findings, obs["history"], obs["changes"], set(final_phase)
        )
        checker.compare_history_with_segments(findings, obs["history"], obs["segments"])
        checker.compare_dead_letters(findings, expected, obs["dead"])
        labels: dict[str, int] = {}
        for s in journal.sent:
            labels[s.label] = labels.get(s.label, 0) + 1
        counts = {
            "records_acked": len(journal.sent),
            "records_on_topics": len(records),
            "by_label": dict(sorted(labels.items())),
            "send_retries": journal.send_failures,
            "accepted_events": expected.accepted,
            "duplicate_deliveries": expected.duplicates,
            "events_erased": expected.erased_events,
            "rejected": expected.rejected,
            "dead_letters": len(obs["dead"]),
            "erasures": len(journal.erasures),
            "erasure_retries": journal.erasure_retries,
            "erasures_abandoned": journal.erasures_abandoned,
            "customers_expected": len(expected.segments),
            "customers_with_segments": len(obs["segments"]),
            "history_rows": len(obs["history"]),
            **change_counts,
            "api_first_pass_sources": sources,
            "top_spend_cutoff": str(expected.top_spend),
            "process_restarts": supervisor.restarts,
            # Exits the nemesis did not cause (kill -9 is -9): crashes the supervisor saw.
            "unplanned_exits": {
                n: [code for code in svc.exits if code != -9]
                for n, svc in supervisor.services.items()
                if any(code != -9 for code in svc.exits)
            },
        }
        result = RunResult(
            self.seed,
            self.schedule,
            nemesis.counts(),
            counts,
            findings.as_dict(),
            self.directory,
            self.notes,
        )
        (self.directory / "result.json").write_text(
            json.dumps(result.as_dict(), indent=1, default=str)
        )
        with (self.directory / "journal.jsonl").open("w") as f:
            for s in journal.sent:
                f.write(json.dumps(s.as_dict()) + "\n")
            for cid, phase, at in journal.erasures:
                f.write(json.dumps({"erasure": cid, "phase": phase, "at": at}) + "\n")
        (self.directory / "faults.json").write_text(
            json.dumps([d.as_dict() for d in nemesis.done], indent=1)
        )
        return result


def _recomputes_since(log: Path, offset: int) -> int:
    """How many population recomputes a service's log shows after byte `offset`."""
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().count(b'"population_recompute_due"')


def _final_rules(nemesis: Nemesis) -> str:
    """The definitions the run ended with: v1, or v2 when its activation went through and
    no rollback followed (on a loaded machine a slow fault can push the rollback past the
    end of the traffic)."""
    rules = "v1"
    for done in nemesis.done:
        if done.note.startswith("failed"):
            continue
        if done.fault.kind == "definitions_change":
            rules = "v2"
        elif done.fault.kind == "definitions_rollback":
            rules = "v1"
    return rules
