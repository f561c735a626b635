"""`genq keys …` and `genq usage`: the operator's view of keys, budgets and spending.

These read and write the database in GENQ_DATABASE_URL directly (not through the API), so an
operator sees every key; the API's `/v1/usage` shows a key only its own spending.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer
from rich.table import Table

from cli.render import console, fail
from models.db import get_engine, session_scope
from models.settings import get_settings

keys_app = typer.Typer(help="Manage API keys and their budgets.", no_args_is_help=True)


def _engine():
    """The database, once it answers at this genq's schema; else one line and exit 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from models.migrate import SchemaCheck

    engine = get_engine(get_settings().database_url)
    try:
        reason = SchemaCheck(engine).problem()
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).splitlines() or [""])[0]
        reason = f"cannot reach the database ({type(cause).__name__}: {first_line})"
    if reason:
        raise fail(reason)
    return engine


def _budget(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        budget = Decimal(value)
    except InvalidOperation:
        raise fail(f"--budget-usd {value!r} is not a number") from None
    if not budget.is_finite() or budget <= 0:
        raise fail("--budget-usd must be a positive amount of USD")
    return budget


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key")],
    budget_usd: Annotated[str | None, typer.Option(help="Spending limit in USD")] = None,
    period: Annotated[str, typer.Option(help="monthly or total (never resets)")] = "total",
) -> None:
    """Create an API key and print its secret alone on stdout (it is shown only once)."""
    from models.keys import create_key

    if not name.strip() or len(name) > 200:
        raise fail("NAME must be 1 to 200 characters")
    if period not in ("monthly", "total"):
        raise fail("--period must be monthly or total")
    budget = _budget(budget_usd)
    engine = _engine()
    try:
        with session_scope(engine) as session:
            key, secret = create_key(session, name=name.strip(), budget_usd=budget, period=period)
    except Exception as exc:
        reason = f"cannot store the key ({type(exc).__name__}); run `genq migrate` first?"
        raise fail(reason) from None
    limit = f"budget {budget} USD ({period})" if budget else "no budget"
    console.print(f"created key {key.id} ({key.name}, {limit}); the secret below is not stored")
    print(secret)


@keys_app.command("list")
def keys_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key with its budget, spending and reservations (never the secrets)."""
    from models.keys import list_keys

    with session_scope(_engine()) as session:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "created_at": k.created_at.isoformat(),
                "revoked": k.revoked_at is not None,
                "budget_usd": None if k.budget_usd is None else str(k.budget_usd),
                "period": k.budget_period,
                "spent_usd": str(k.spent_usd),
                "reserved_usd": str(k.reserved_usd),
            }
            for k in list_keys(session)
        ]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "name", "prefix", "budget", "period", "spent", "reserved", "revoked")
    for r in rows:
        table.add_row(
            r["id"],
            r["name"],
            r["prefix"],
            r["budget_usd"] or "-",
            r["period"],
            r["spent_usd"],
            r["reserved_usd"],
            "yes" if r["revoked"] else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(ref: Annotated[str, typer.Argument(help="Key id or prefix from `keys list`")]):
    """Revoke a key: it answers 401 from now on; its jobs and usage stay."""
    from models.errors import GenqError
    from models.keys import revoke_key

    try:
        with session_scope(_engine()) as session:
            key = revoke_key(session, ref=ref)
    except GenqError as exc:
        raise fail(exc.detail) from None
    console.print(f"revoked key {key.id} ({key.name})")


def usage(
    group_by: Annotated[str, typer.Option(help="model, day, key or status")] = "model",
    start: Annotated[str | None, typer.Option("--from", help="ISO date or datetime")] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="ISO date (inclusive) or datetime")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Only this key (id or prefix)")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Spending across all keys (or one), as a table or JSON."""
    from models.errors import GenqError
    from models.keys import find_key
    from models.usage import as_json, parse_bound, usage_report

    if group_by not in ("model", "day", "key", "status"):
        raise fail("--group-by must be model, day, key or status")
    try:
        with session_scope(_engine()) as session:
            key_id = find_key(session, ref=key).id if key else None
            report = usage_report(
                session,
                key_id=key_id,
                group_by=group_by,
                start=parse_bound(start),
                end=parse_bound(end, end=True),
            )
    except GenqError as exc:
        raise fail(exc.detail) from None
    if json_out:
        print(json.dumps(as_json(report), indent=2))
        return
    console.print(_usage_table(report))


#: report field -> short column header, so the table fits 80 columns
USAGE_COLUMNS = {
    "jobs": "jobs",
    "attempts": "attempts",
    "prompt_tokens": "prompt tok",
    "completion_tokens": "output tok",
    "cost_usd": "cost $",
    "reserved_usd": "reserved $",
}


def _cell(value) -> str:
    return format(value.normalize(), "f") if isinstance(value, Decimal) else str(value)


def _usage_table(report: dict) -> Table:
    group_by = report["group_by"]
    table = Table(title=f"usage by {group_by}")
    table.add_column(group_by, no_wrap=True)
    for header in USAGE_COLUMNS.values():
        table.add_column(header, justify="right")
    for row in [*report["data"], {group_by: "total", **report["total"]}]:
        label = str(row[group_by]) + (f" ({row['name']})" if row.get("name") else "")
        table.add_row(label, *(_cell(row[c]) for c in USAGE_COLUMNS))
    return table


def bench_savings(
    limit: Annotated[int | None, typer.Option(help="Use only this many prompts")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Price the fixed 200-prompt workload under each tier and always-premium (offline)."""
    from bench.savings import run_savings
    from models.logging import configure_logging
    from models.tokens import install_encodings

    settings = get_settings()
    # one log line per job would drown the table
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    install_encodings(settings.tiktoken_cache_dir)
    with console.status("running the savings workload under 4 scenarios"):
        summary, table = run_savings(limit=limit)
    print(json.dumps(summary, indent=2) if json_out else table)
    console.print(f"results: {summary['file']}")
    if not (summary["target_met"] and summary["no_job_over_ceiling"]):
        raise typer.Exit(1)


def bench_chaos(
    jobs: Annotated[int, typer.Option(help="Jobs to run", min=10)] = 1000,
    workers: Annotated[int, typer.Option(help="Worker processes", min=2)] = 3,
) -> None:
    """Fault run: provider 429/503s and a worker SIGKILLed mid-run; prints the invariant counts."""
    from bench.chaos import run_chaos, save
    from models.logging import configure_logging
    from models.tokens import install_encodings

    settings = get_settings()
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    directory = install_encodings(settings.tiktoken_cache_dir)
    with console.status(f"chaos run: {jobs} jobs, {workers} workers, one killed"):
        summary = run_chaos(jobs=jobs, workers=workers, tiktoken_dir=directory)
    table = Table("count", "value", title="genq chaos run")
    for name, value in summary.items():
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"results: {save(summary)}")
    broken = [k for k, v in summary.items() if "must be 0" in k and v]
    if broken or summary["succeeded"] != jobs:
        raise typer.Exit(1)
