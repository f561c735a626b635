"""`genq batch …`: OpenAI-compatible batches (`/v1/files` + `/v1/batches`) from the shell.

`create` uploads a JSONL file of `{"custom_id", "method", "url", "body"}` lines and creates the
batch; `--watch` shows its progress on stderr until it ends. `results` writes the output lines,
then the error lines, to a file (or stdout with `-o -`). Results go to stdout, progress and
errors to stderr; ids and money are printed whole. (`genq submit-batch` is the older way:
plain genq jobs, 100 per request; cli/batch.py.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from cli.client import ClientError, GenqClient
from cli.render import console, fail, out, print_json
from cli.tables import Column, show_table
from models.money import money
from models.settings import get_settings

batch_app = typer.Typer(
    help="OpenAI-compatible batches: create from a JSONL file, watch, list, cancel, results.",
    no_args_is_help=True,
)
#: a batch in one of these changes no more
ENDED = ("completed", "failed", "expired", "cancelled")
ENDPOINTS = ("/v1/chat/completions", "/v1/images/generations")
JsonOption = Annotated[bool, typer.Option("--json", help="Print the batch as JSON")]


def _client() -> GenqClient:
    settings = get_settings()
    if settings.api_key is None:
        raise fail("set GENQ_API_KEY to a key from `genq keys create NAME`")
    return GenqClient(settings.api_url, settings.api_key.get_secret_value())


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise fail(f"--metadata {pair!r}: expected KEY=VALUE")
        found[name] = value
    return found or None


@batch_app.command("create")
def create(
    file: Annotated[Path, typer.Argument(help="JSONL: one request per line")],
    endpoint: Annotated[str, typer.Option(help=" or ".join(ENDPOINTS))] = ENDPOINTS[0],
    metadata: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE, stored with the batch (repeat)")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Show progress on stderr until it ends")] = False,
    json_out: JsonOption = False,
) -> None:
    """Upload FILE and create a batch of its lines; prints the batch (its id first)."""
    if endpoint not in ENDPOINTS:
        raise fail(f"--endpoint must be one of {', '.join(ENDPOINTS)}")
    if not file.is_file():
        raise fail(f"cannot read {file}: no such file")
    client = _client()
    try:
        uploaded = client.upload_batch_file(file)
        console.print(f"uploaded {file} as {uploaded['id']} ({uploaded['bytes']} bytes)")
        body: dict[str, Any] = {
            "input_file_id": uploaded["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        if meta := _metadata(metadata or []):
            body["metadata"] = meta
        batch = client.create_batch(body)
        if watch:
            batch = _watch(client, batch)
    except ClientError as exc:
        raise fail(str(exc)) from None
    _show(batch, json_out)
    _exit_for(batch, watched=watch)


def _watch(client: GenqClient, batch: dict, interval_s: float = 0.5) -> dict:
    """A progress bar of answered lines (completed + failed) on stderr until the batch ends."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("completed {task.fields[ok]}  failed {task.fields[bad]}"),
        TimeElapsedColumn(),
    )
    console.print(f"batch {batch['id']} {batch['status']}; watching (Ctrl-C stops watching only)")
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(batch["status"], total=None, ok=0, bad=0)
        while True:
            counts = batch["request_counts"]
            progress.update(
                task,
                total=counts["total"] or None,
                completed=counts["completed"] + counts["failed"],
                description=batch["status"],
                ok=counts["completed"],
                bad=counts["failed"],
            )
            if batch["status"] in ENDED:
                return batch
            time.sleep(interval_s)
            batch = client.batch(batch["id"])


def _exit_for(batch: dict, *, watched: bool) -> None:
    """A batch that failed validation is an error (one line); a watched batch that did not
    complete exits 1 after printing it."""
    if batch["status"] == "failed":
        errors = (batch.get("errors") or {}).get("data") or []
        first = errors[0] if errors else {"message": "no reason given"}
        where = f"line {first['line']}: " if first.get("line") else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise fail(f"batch {batch['id']} failed: {where}{first['message']}{more}")
    if watched and batch["status"] != "completed":
        raise fail(f"batch {batch['id']} ended {batch['status']}")


def _summary(batch: dict) -> str:
    counts, usage = batch["request_counts"], batch.get("usage") or {}
    lines = [
        f"batch {batch['id']}  {batch['status']}  {batch['endpoint']}",
        f"  requests: {counts['completed']} completed, {counts['failed']} failed, "
        f"{counts['total']} total",
        f"  usage: {usage.get('input_tokens', 0)} input + {usage.get('output_tokens', 0)} "
        f"output tokens; cost ${money(batch.get('cost_usd') or 0)}",
        f"  input file {batch['input_file_id']}",
    ]
    for name in ("output_file_id", "error_file_id"):
        if batch.get(name):
            lines.append(f"  {name.removesuffix('_id').replace('_', ' ')} {batch[name]}")
    for error in (batch.get("errors") or {}).get("data") or []:
        where = f"line {error['line']}: " if error.get("line") else ""
        lines.append(f"  error {error['code']}: {where}{error['message']}")
    return "\n".join(lines)


def _show(batch: dict, json_out: bool) -> None:
    if json_out or not sys.stdout.isatty():
        print_json(batch)
    else:
        out.print(_summary(batch), markup=False)


@batch_app.command("status")
def status(
    batch_id: Annotated[str, typer.Argument(help="A batch id")], json_out: JsonOption = False
) -> None:
    """Show one batch: status, request counts, usage and cost, its files."""
    try:
        batch = _client().batch(batch_id)
    except ClientError as exc:
        raise fail(str(exc)) from None
    _show(batch, json_out)


@batch_app.command("list")
def list_(
    limit: Annotated[int, typer.Option(help="At most this many (1-100)")] = 20,
    after: Annotated[str | None, typer.Option(help="Only batches created before this one")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON")] = False,
) -> None:
    """Your batches, newest first."""
    try:
        page = _client().batches(limit=limit, after=after)
    except ClientError as exc:
        raise fail(str(exc)) from None
    if json_out:
        return print_json(page)
    columns = [
        Column("id", "id", keep=True),
        Column("status", "status"),
        Column("endpoint", "endpoint"),
        Column("completed", "completed", justify="right"),
        Column("failed", "failed", justify="right"),
        Column("total", "total", justify="right"),
        Column("cost_usd", "cost USD", keep=True, justify="right"),
    ]
    rows = [
        {
            "id": b["id"],
            "status": b["status"],
            "endpoint": b["endpoint"],
            **{k: str(v) for k, v in b["request_counts"].items()},
            "cost_usd": money(b.get("cost_usd") or 0),
        }
        for b in page["data"]
    ]
    show_table(columns, rows)
    if page.get("has_more"):
        console.print(f"more: genq batch list --after {page['last_id']}")


@batch_app.command("cancel")
def cancel(
    batch_id: Annotated[str, typer.Argument(help="A batch id")], json_out: JsonOption = False
) -> None:
    """Cancel a batch: lines not started never run; it ends `cancelled` once none runs."""
    try:
        batch = _client().cancel_batch(batch_id)
    except ClientError as exc:
        raise fail(str(exc)) from None
    _show(batch, json_out)


@batch_app.command("results")
def results(
    batch_id: Annotated[str, typer.Argument(help="A batch id")],
    output: Annotated[str, typer.Option("-o", "--output", help="File to write, `-` = stdout")],
    errors: Annotated[bool, typer.Option(help="Also write the error file's lines")] = True,
) -> None:
    """Write the batch's output lines, then its error lines, as JSONL (one per request)."""
    client = _client()
    try:
        batch = client.batch(batch_id)
        if batch["status"] not in ENDED:
            raise ClientError(
                f"batch {batch_id} is {batch['status']}; its files exist once it ends"
            )
        wanted = [batch.get("output_file_id")] + ([batch.get("error_file_id")] if errors else [])
        with _opened(output) as target:
            written = sum(_copy(client, file_id, target) for file_id in wanted if file_id)
    except ClientError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror}") from None
    console.print(f"wrote {written} lines of batch {batch_id} to {output}")


def _opened(output: str) -> BinaryIO:
    return open(sys.stdout.fileno(), "wb", closefd=False) if output == "-" else open(output, "wb")


def _copy(client: GenqClient, file_id: str, target: BinaryIO) -> int:
    """Stream one file's content into `target`; how many lines it had."""
    lines = 0
    for chunk in client.file_content(file_id):
        target.write(chunk)
        lines += chunk.count(b"\n")
    return lines
