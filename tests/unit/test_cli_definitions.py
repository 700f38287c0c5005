"""`python -m services.cli definitions`: argument handling (usage errors exit 2 before any
request; an API that cannot be reached exits 1) and what the commands print. No API runs
here: tests/integration/test_api_definitions.py drives the commands against a live one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.__main__ import cli
from services.cli.client import DEFAULT_URL, ApiFailure
from services.cli.formatting import (
    diff_text,
    failure_lines,
    preview_text,
    summary_text,
    table,
    version_text,
    versions_table,
)
from tests.conftest import ROOT, free_port

DEFAULT = ROOT / "shared/segmentation/definitions/default.yaml"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def said(output: str) -> str:
    """The output without the error box's frame and line breaks."""
    return " ".join(output.replace("│", " ").split())


@pytest.fixture
def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_the_default_address_is_the_apis() -> None:
    assert DEFAULT_URL == "http://127.0.0.1:8100"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["definitions", "list"], "Missing option '--key'"),
        (["definitions", "validate", "missing.yaml", "--key", "k"], "does not exist"),
        (["definitions", "preview", str(DEFAULT), "--key", "k", "--samples", "0"], "--samples"),
        (["definitions", "preview", str(DEFAULT), "--key", "k", "--samples", "101"], "--samples"),
        (["definitions", "activate", str(DEFAULT), "--key", "k", "--publish", "all"], "--publish"),
        (["definitions", "activate", str(DEFAULT), "--key", "k", "--replaces", "0"], "--replaces"),
        (["definitions", "show", "zero", "--key", "k"], "'version': Input should be a valid"),
        (["definitions", "diff", "1", "--key", "k"], "Missing argument"),
        (["definitions", "rollback", "0", "--key", "k"], "greater than or equal to 1"),
        (["definitions", "erase", "--key", "k"], "No such command"),
    ],
)
def test_usage_errors_exit_2_before_any_request(
    runner: CliRunner, closed_url: str, args: list[str], complaint: str
) -> None:
    result = runner.invoke(cli, [*args, "--url", closed_url] if "--key" in args else args)
    assert result.exit_code == 2, result.output
    assert complaint in said(result.output)


def test_a_file_that_is_not_text_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    binary = tmp_path / "defs.yaml"
    binary.write_bytes(b"description: caf\xe9\n")
    result = runner.invoke(cli, ["definitions", "validate", str(binary), "--key", "k"])
    assert result.exit_code == 2
    assert f"{binary} is not UTF-8 text" in said(result.output)


def test_an_unreachable_api_exits_1_naming_it(runner: CliRunner, closed_url: str) -> None:
    # The key and the address from the environment, as documented.
    env = {"STREAMSEG_API_KEY": "ssk_x", "STREAMSEG_API_URL": closed_url}
    result = runner.invoke(cli, ["definitions", "list"], env=env)
    assert result.exit_code == 1
    assert f"error: unreachable: cannot reach the API at {closed_url}" in said(result.output)


def test_a_failure_prints_the_error_then_every_problem_on_its_own_line() -> None:
    failure = ApiFailure(
        422,
        "invalid_definitions",
        "3 problems",
        [
            {"dimension": "value_tier", "rule": "vip", "message": "syntax error at column 14"},
            {"dimension": "engagement", "rule": None, "message": "a gap"},
            {"dimension": None, "rule": None, "message": "YAML syntax error"},
        ],
    )
    assert failure_lines(failure) == [
        "error: invalid_definitions (HTTP 422): 3 problems",
        "value_tier/vip: syntax error at column 14",
        "engagement: a gap",
        "YAML syntax error",
    ]
    unreachable = ApiFailure(None, "unreachable", "cannot reach the API")
    assert failure_lines(unreachable) == ["error: unreachable: cannot reach the API"]


def test_tables_align_text_left_and_numbers_right() -> None:
    assert table(("segment", "now", "change"), [("engaged", 5, "+12"), ("none", 120, None)]) == (
        "segment  now  change\nengaged    5     +12\nnone     120       -"
    )


def test_a_summary_names_dimensions_cutoffs_scores_and_changes() -> None:
    text = summary_text(
        {
            "content_hash": "abc",
            "description": "test",
            "dimensions": [
                {
                    "name": "engagement",
                    "description": "",
                    "segments": ["engaged", "none"],
                    "metrics": ["days_since_last_interaction"],
                }
            ],
            "cutoffs": [
                {"name": "vip", "metric": "spend_365d", "top_percent": 5.0, "value": None},
                {"name": "big", "metric": "aov", "top_percent": None, "value": 250.5},
            ],
            "scores": [{"name": "r", "metric": "orders_365d", "buckets": 5, "better": "higher"}],
            "in_force_version": 3,
            "changed_dimensions": ["engagement"],
        }
    )
    assert text.splitlines() == [
        "valid: content hash abc",
        "description: test",
        "dimension engagement: engaged, none (reads days_since_last_interaction)",
        "cut-off vip: top 5% of spend_365d",
        "cut-off big: 250.5 (aov)",
        "score r: 5 buckets of orders_365d, higher is better",
        "changed dimensions (against version 3): engagement",
    ]


VERSION = {
    "version": 4,
    "content_hash": "abc",
    "activated_at": "2026-03-01T12:00:00Z",
    "activated_by": "key:3fa9c0d1e2b4",
    "note": "engaged is 10 days",
    "replaces": 3,
    "publish": "summary",
    "changed_dimensions": ["engagement"],
    "in_force": True,
    "backfill": {
        "total": 20,
        "queued": 5,
        "started_at": "2026-03-01T12:00:00Z",
        "fed_at": None,
        "completed_at": None,
        "superseded_by": None,
    },
}


def test_versions_print_their_record_and_backfill() -> None:
    assert version_text(VERSION | {"content": "dimensions: {}\n"}).splitlines() == [
        "version 4 (in force)",
        "activated 2026-03-01T12:00:00Z by key:3fa9c0d1e2b4",
        "replaces: 3",
        "publish: summary",
        "changed dimensions: engagement",
        "backfill: queued 5/20",
        "content hash: abc",
        "note: engaged is 10 days",
        "",
        "dimensions: {}",
    ]
    seeded = VERSION | {
        "version": 1,
        "in_force": False,
        "replaces": None,
        "backfill": None,
        "note": "",
        "activated_by": "segmenter",
        "changed_dimensions": [],
    }
    lines = versions_table([VERSION, seeded]).splitlines()
    assert lines[0].split() == [
        "version", "activated_at", "by", "replaces", "publish", "changed", "backfill", "note"
    ]  # fmt: skip
    assert lines[1].split()[:3] == ["4", "*", "2026-03-01T12:00:00Z"]
    assert lines[1].endswith("queued 5/20  engaged is 10 days")
    assert lines[2].split() == ["1", "2026-03-01T12:00:00Z", "segmenter", "-", "summary", "-", "-"]


def test_a_diff_shows_changed_conditions_then_the_text() -> None:
    text = diff_text(
        {
            "from_version": 1,
            "to_version": 2,
            "identical": False,
            "description": {"old": "a", "new": "a"},
            "dimensions": [
                {
                    "name": "rfm",
                    "status": "unchanged",
                    "reevaluated": False,
                    "segments": [],
                    "lets": [],
                    "order_changed": False,
                    "inputs_changed": [],
                },
                {
                    "name": "engagement",
                    "status": "changed",
                    "reevaluated": True,
                    "segments": [
                        {
                            "name": "engaged",
                            "status": "changed",
                            "old_condition": "x < 7",
                            "new_condition": "x < 10",
                            "old_description": "",
                            "new_description": "",
                        },
                        {
                            "name": "lapsed",
                            "status": "added",
                            "old_condition": None,
                            "new_condition": "x >= 90",
                            "old_description": None,
                            "new_description": "",
                        },
                    ],
                    "lets": [],
                    "order_changed": True,
                    "inputs_changed": ["vip_spend"],
                },
            ],
            "cutoffs": [{"name": "vip_spend", "status": "changed", "old": {}, "new": {}}],
            "scores": [],
            "text": "--- version 1\n+++ version 2\n",
        }
    )
    assert text.splitlines() == [
        "from version 1 to version 2:",
        "dimension engagement: changed (re-evaluated)",
        "  segment engaged: changed",
        "    - x < 7",
        "    + x < 10",
        "  segment lapsed: added",
        "    + x >= 90",
        "  rule order changed (the first matching rule wins)",
        "  reads changed cut-offs or scores: vip_spend",
        "cut-off vip_spend: changed",
        "",
        "--- version 1",
        "+++ version 2",
    ]
    identical = {"from_version": 2, "to_version": 3, "identical": True}
    assert diff_text(identical) == "versions 2 and 3 define the same segments"


def test_a_preview_result_prints_sizes_and_moves() -> None:
    result = {
        "as_of": "2026-03-01T12:00:00Z",
        "base_version": 3,
        "customers": 130,
        "population": {"cutoffs": {}, "edges": {}},
        "dimensions": [
            {
                "name": "engagement",
                "status": "changed",
                "segments": [
                    {"name": "engaged", "now": 10, "candidate": 22},
                    {"name": "casual", "now": 30, "candidate": 18},
                    {"name": "none", "now": 90, "candidate": 90},
                ],
                "transitions": [
                    {
                        "from": "casual",
                        "to": "engaged",
                        "customers": 12,
                        "samples": [{"customer_id": "c-7", "reason": "x=8.5 < 10"}],
                    }
                ],
            },
            {
                "name": "old_dim",
                "status": "removed",
                "segments": [{"name": "a", "now": 130, "candidate": 0}],
                "transitions": [
                    {"from": "a", "to": None, "customers": 130, "samples": []},
                ],
            },
        ],
    }
    assert preview_text(result).splitlines() == [
        "130 customers as of 2026-03-01T12:00:00Z, against version 3",
        "",
        "engagement (changed)",
        "segment  now  candidate  change",
        "engaged   10         22     +12",
        "casual    30         18     -12",
        "none      90         90       0",
        "moves:",
        "  casual -> engaged: 12 customers",
        "    c-7: x=8.5 < 10",
        "",
        "old_dim (removed)",
        "segment  now  candidate  change",
        "a        130          0    -130",
        "moves:",
        "  a -> (none): 130 customers",
    ]
