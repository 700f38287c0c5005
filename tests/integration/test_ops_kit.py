"""The ops kit (deploy/grafana, deploy/prometheus), checked offline: the alert rules and
every dashboard query parse with Debian's promtool, the dashboard matches the JSON Schema
kept beside it, each alert has a runbook in docs/operations.md, and every metric the kit
names is exposed by the services' /metrics, scraped from real running processes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, MakeTopic, eventually, free_port, unique

pytestmark = pytest.mark.integration

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
BOARD = ROOT / "deploy" / "grafana" / "streamseg.json"
BOARD_SCHEMA = ROOT / "deploy" / "grafana" / "dashboard.schema.json"
OPERATIONS = ROOT / "docs" / "operations.md"
# Series Prometheus makes itself, not a service.
PROMETHEUS_OWN = {"up"}
_METRIC = re.compile(r"\bstreamseg_[a-z0-9_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise RuntimeError("promtool not found: apt-get install prometheus (deploy/test.sh does)")
    return found


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )


def board_queries() -> list[tuple[str, str]]:
    board = json.loads(BOARD.read_text())
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def as_recording_rules(queries: list[tuple[str, str]], path: Path) -> Path:
    """Each query as a recording rule, so that promtool parses it (this promtool has no
    command that parses a bare expression)."""
    rules = [
        {"record": f"streamseg:board_query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(queries)
    ]
    path.write_text(yaml.safe_dump({"groups": [{"name": "board", "rules": rules}]}))
    return path


def test_alert_rules_pass_promtool_and_each_has_a_runbook() -> None:
    result = check_rules(ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = alert_rules()
    assert len(rules) >= 8
    runbooks = {
        line.removeprefix("### ").strip()
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("### ")
    }
    for rule in rules:
        assert rule["alert"] in runbooks, f"docs/operations.md has no ### {rule['alert']}"
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{anchor}"


def test_the_board_matches_its_schema_and_every_query_parses(tmp_path: Path) -> None:
    board = json.loads(BOARD.read_text())
    validator = jsonschema_rs.validator_for(json.loads(BOARD_SCHEMA.read_text()))
    assert [e.message for e in validator.iter_errors(board)] == []
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in board["panels"]}
    for wanted in (
        "Consumer lag (records)",
        "Events/s",
        "Dead letters by reason",
        "Backlog (customers due)",
        "Backlog age",
        "Event-to-change latency",
        "Time-driven lateness",
        "Outbox",
        "API p99 by route",
        "Cache hit ratio",
    ):
        assert wanted in titles

    queries = board_queries()
    result = check_rules(as_recording_rules(queries, tmp_path / "board.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout

    # The check can fail: one broken query fails it, naming the problem.
    broken = as_recording_rules(
        [*queries, ("broken", "sum(rate(streamseg_x[5m])")], tmp_path / "bad.yml"
    )
    result = check_rules(broken)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr

    # Nor does the schema let a panel without a query through.
    board["panels"].append(
        {
            "id": 999,
            "type": "timeseries",
            "title": "empty",
            "gridPos": {"h": 8, "w": 8, "x": 0, "y": 0},
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "targets": [],
        }
    )
    assert not validator.is_valid(board)


@pytest.fixture
def processes(service_env: dict[str, str]) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env={**service_env, "STREAMSEG_LOG_JSON": "false", **extra},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def exposed_names(text: str) -> set[str]:
    """Every sample name a scrape of this exposition can carry, labelled families with no
    samples yet included (their TYPE line declares them)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


async def test_every_metric_the_kit_names_is_exposed_by_a_running_service(
    processes: Any, make_topic: MakeTopic
) -> None:
    ports = {name: free_port() for name in ("ingest", "segmenter", "api", "webhooks")}
    changes = await make_topic("changes")
    processes(
        "ingest",
        {
            "STREAMSEG_INGEST_OPS_PORT": str(ports["ingest"]),
            "STREAMSEG_INGEST_ORDERS_TOPIC": await make_topic("orders"),
            "STREAMSEG_INGEST_INTERACTIONS_TOPIC": await make_topic("interactions"),
            "STREAMSEG_INGEST_CUSTOMERS_TOPIC": await make_topic("customers"),
            "STREAMSEG_INGEST_GROUP_ID": unique("g"),
            "STREAMSEG_INGEST_TOPIC_PARTITIONS": "1",
        },
    )
    processes(
        "segmenter",
        {
            "STREAMSEG_SEGMENTER_OPS_PORT": str(ports["segmenter"]),
            "STREAMSEG_SEGMENTER_CHANGES_TOPIC": changes,
        },
    )
    processes("api", {"STREAMSEG_API_PORT": str(ports["api"])})
    processes(
        "webhooks",
        {
            "STREAMSEG_WEBHOOKS_OPS_PORT": str(ports["webhooks"]),
            "STREAMSEG_SEGMENTER_CHANGES_TOPIC": changes,
            "STREAMSEG_WEBHOOKS_GROUP_ID": unique("w"),
        },
    )
    exposed: set[str] = set()
    async with httpx.AsyncClient(timeout=5) as client:
        for name, port in ports.items():

            async def ready(port: int = port) -> bool:
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/readyz")
                except httpx.TransportError:
                    return False
                return r.status_code == 200

            await eventually(ready, within_seconds=60, message=f"{name} ready")
            scrape = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert scrape.status_code == 200
            exposed |= exposed_names(scrape.text)

    named = {m for _, expr in board_queries() for m in _METRIC.findall(expr)}
    named |= {m for rule in alert_rules() for m in _METRIC.findall(rule["expr"])}
    assert len(named) >= 15
    assert sorted(named - exposed) == []
    assert "streamseg_not_a_metric_total" not in exposed
    # And nothing else is named but Prometheus' own series.
    for rule in alert_rules():
        others = set(re.findall(r"\b([a-z_][a-z0-9_]*)\{", rule["expr"])) - set(
            _METRIC.findall(rule["expr"])
        )
        assert others <= PROMETHEUS_OWN, rule["alert"]
