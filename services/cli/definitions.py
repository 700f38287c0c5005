"""`python -m services.cli definitions ...`: validate, preview, activate, list, show, diff and
roll back segment definitions through the HTTP API.

Every command takes the API's address (`--url`, STREAMSEG_API_URL) and a key (`--key`,
STREAMSEG_API_KEY): `definitions:read` for validate, list, show and diff, `definitions:write`
for preview, activate and rollback (which, without --replaces, read the version in force
first, so they need `definitions:read` too). Exit status: 0 done, 1 the API refused or could
not be reached (the error and every problem are printed), 2 a usage error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli import formatting
from services.cli.client import DEFAULT_URL, ApiClient, ApiFailure
from shared.definitions.repository import Publish as PublishPolicy

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Segment definitions: validate, preview, activate, list, show, diff, roll back",
)

Url = Annotated[str, typer.Option("--url", envvar="STREAMSEG_API_URL", help="The API's base URL")]
Key = Annotated[
    str,
    typer.Option(
        "--key", envvar="STREAMSEG_API_KEY", help="An API key with the scope the command needs"
    ),
]
File = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, readable=True, help="A definitions YAML file"),
]
Version = Annotated[int, typer.Argument(min=1, help="A version number (see `list`)")]
Replaces = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="The version in force you reviewed against; by default the one in force now",
    ),
]
Note = Annotated[str, typer.Option(help="Why, for the version's record")]
Publish = Annotated[
    PublishPolicy,
    typer.Option(
        help="The backfill's segment changes: each (as live ones), none, or summary (one event)"
    ),
]
FINISHED = frozenset({"done", "failed", "cancelled"})


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{file} is not UTF-8 text", param_hint="FILE") from None


def _out(text: str) -> None:
    typer.echo(text)


def _err(text: str) -> None:
    typer.echo(text, err=True)


@contextmanager
def _api(url: str, key: str) -> Iterator[ApiClient]:
    """A client; an API failure inside prints the error and every problem, and exits 1."""
    client = ApiClient(url, key)
    try:
        yield client
    except ApiFailure as failure:
        for line in formatting.failure_lines(failure):
            _err(line)
        raise typer.Exit(1) from None
    finally:
        client.close()


def _in_force(client: ApiClient, replaces: int | None) -> int | None:
    """`replaces` as given, else the version in force now (said on stderr)."""
    if replaces is not None:
        return replaces
    page = client.call("GET", "/v1/definitions", params={"limit": 1})
    current: int | None = page["in_force"]
    if current is None:
        _err("nothing is in force yet: this is the first version")
    else:
        _err(f"replacing version {current}, the version in force (--replaces names it)")
    return current


@cli.command("validate")
def validate_cmd(file: File, key: Key, url: Url = DEFAULT_URL) -> None:
    """Check a definitions file and summarise it; changes nothing."""
    text = _read(file)
    with _api(url, key) as client:
        summary = client.call(
            "POST",
            "/v1/definitions/validate",
            content=text.encode(),
            headers={"Content-Type": "application/yaml"},
        )
    _out(formatting.summary_text(summary))


@cli.command("preview")
def preview_cmd(
    file: File,
    key: Key,
    url: Url = DEFAULT_URL,
    samples: Annotated[int, typer.Option(min=1, max=100, help="Sample customers per move")] = 10,
    wait: Annotated[bool, typer.Option(help="Wait for the result and print it")] = False,
    poll_seconds: Annotated[float, typer.Option(min=0.05, hidden=True)] = 1.0,
) -> None:
    """Start a preview of a file against the version in force (--wait: print the result)."""
    text = _read(file)
    with _api(url, key) as client:
        preview = client.call(
            "POST", "/v1/definitions/previews", json={"content": text, "samples": samples}
        )
        _err(
            f"preview {preview['id']} of version {preview['base_version']}'s customers:"
            f" {preview['status']}"
        )
        if not wait:
            _out(preview["id"])
            return
        try:
            preview = _wait(client, preview, poll_seconds)
        except KeyboardInterrupt:
            _err(f"stopped waiting; preview {preview['id']} goes on")
            raise typer.Exit(130) from None
    if preview["status"] != "done":
        _err(
            f"preview {preview['id']} {preview['status']}: {preview.get('error') or ''}".rstrip(
                ": "
            )
        )
        raise typer.Exit(1)
    _out(formatting.preview_text(preview["result"]))


def _wait(client: ApiClient, preview: dict[str, Any], poll_seconds: float) -> dict[str, Any]:
    path = f"/v1/definitions/previews/{preview['id']}"
    shown = ""
    while True:
        line = formatting.progress_line(preview)
        if line != shown:
            _err(line)
            shown = line
        if preview["status"] in FINISHED:
            return preview
        time.sleep(poll_seconds)
        preview = client.call("GET", path)


@cli.command("activate")
def activate_cmd(
    file: File,
    key: Key,
    url: Url = DEFAULT_URL,
    replaces: Replaces = None,
    note: Note = "",
    publish: Publish = "each",
) -> None:
    """Put a file's definitions in force as a new version."""
    text = _read(file)
    with _api(url, key) as client:
        body = {
            "content": text,
            "replaces": _in_force(client, replaces),
            "note": note,
            "publish": publish,
        }
        view = client.call("POST", "/v1/definitions", json=body)
    _out(f"activated version {view['version']}")
    _out(formatting.version_text(view))


@cli.command("list")
def list_cmd(key: Key, url: Url = DEFAULT_URL) -> None:
    """Every version, newest first; * marks the one in force."""
    with _api(url, key) as client:
        items = list(_pages(client))
    _out(formatting.versions_table(items))


def _pages(client: ApiClient) -> Iterator[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = client.call("GET", "/v1/definitions", params=params)
        yield from page["items"]
        if page["next_cursor"] is None:
            return
        params["cursor"] = page["next_cursor"]


@cli.command("show")
def show_cmd(version: Version, key: Key, url: Url = DEFAULT_URL) -> None:
    """One version: who activated it, why, its backfill, and its content."""
    with _api(url, key) as client:
        view = client.call("GET", f"/v1/definitions/{version}")
    _out(formatting.version_text(view))


@cli.command("diff")
def diff_cmd(
    a: Annotated[int, typer.Argument(min=1, help="The older version")],
    b: Annotated[int, typer.Argument(min=1, help="The newer version")],
    key: Key,
    url: Url = DEFAULT_URL,
) -> None:
    """What differs from version A to version B: per dimension and segment, then as text."""
    with _api(url, key) as client:
        diff = client.call("GET", f"/v1/definitions/{a}/diff/{b}")
    _out(formatting.diff_text(diff))


@cli.command("rollback")
def rollback_cmd(
    version: Version,
    key: Key,
    url: Url = DEFAULT_URL,
    replaces: Replaces = None,
    note: Annotated[str, typer.Option(help="Default: `rollback to version N`")] = "",
    publish: Publish = "each",
) -> None:
    """Put an earlier version's content back in force, as a new version."""
    with _api(url, key) as client:
        body = {"replaces": _in_force(client, replaces), "note": note, "publish": publish}
        view = client.call("POST", f"/v1/definitions/{version}/rollback", json=body)
    _out(f"activated version {view['version']} (the content of version {version})")
    _out(formatting.version_text(view))
