"""`genq keys …` and `genq usage`: the operator's view of keys, budgets and spending.

These read and write the database in GENQ_DATABASE_URL directly (not through the API), so an
operator sees every key; the API's `/v1/usage` shows a key only its own spending.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer
from rich.table import Table

from cli.render import console, fail, out, print_json
from cli.tables import Column, show_table
from models.db import get_engine, session_scope
from models.money import money
from models.settings import get_settings
from models.webhook_urls import host_of

keys_app = typer.Typer(help="Manage API keys and their budgets.", no_args_is_help=True)


def _engine():
    """The database, once it answers at this genq's schema; else one line and exit 1."""
    from cli.database import DatabaseUnreachable, schema_problem

    engine = get_engine(get_settings().database_url)
    try:
        reason = schema_problem(engine)
    except DatabaseUnreachable as exc:
        reason = str(exc)
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
    moderation: Annotated[
        str | None,
        typer.Option(help="off, flag or block: the key's jobs' default (else GENQ_MODERATION)"),
    ] = None,
    webhook_url: Annotated[
        str | None,
        typer.Option(
            help="Default webhook URL of the key's jobs (also creates its signing secret)"
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the key's id, name, budget and secret as JSON")
    ] = False,
) -> None:
    """Create an API key and print its secret alone on stdout (it is shown only once); with
    --webhook-url, the webhook signing secret follows on a second line."""
    from models.keys import create_key
    from models.webhooks import new_secret

    if not name.strip() or len(name) > 200:
        raise fail("NAME must be 1 to 200 characters")
    if period not in ("monthly", "total"):
        raise fail("--period must be monthly or total")
    if moderation not in (None, "off", "flag", "block"):
        raise fail("--moderation must be off, flag or block")
    budget = _budget(budget_usd)
    _check_webhook_url(webhook_url)
    engine = _engine()
    try:
        with session_scope(engine) as session:
            key, secret = create_key(
                session,
                name=name.strip(),
                budget_usd=budget,
                period=period,
                moderation=moderation,
                webhook_url=webhook_url,
            )
            key.webhook_secret = new_secret() if webhook_url else None
    except Exception as exc:
        reason = f"cannot store the key ({type(exc).__name__}); run `genq migrate` first?"
        raise fail(reason) from None
    limit = f"budget {money(budget)} USD ({period})" if budget else "no budget"
    if moderation:
        limit += f", moderation {moderation}"
    console.print(f"created key {key.id} ({key.name}, {limit}); the secret below is not stored")
    if webhook_url:
        console.print("its webhook signing secret follows on the next line (shown only once)")
    if json_out:
        extra = {"webhook_secret": key.webhook_secret} if webhook_url else {}
        print_json({**_key_row(key), "secret": secret, **extra})
    else:
        print(secret)
        if webhook_url:
            print(key.webhook_secret)


def _check_webhook_url(url: str | None) -> None:
    """A key's default webhook URL is checked like a job's (http(s), public addresses)."""
    from models.webhook_urls import UrlRefused, check_url

    if url is not None:
        try:
            check_url(url, allow_private=get_settings().webhook_allow_private)
        except UrlRefused as exc:
            raise fail(f"--webhook-url refused: {exc.detail}") from None


@keys_app.command("webhook-secret")
def keys_webhook_secret(
    ref: Annotated[str, typer.Argument(help="Key id, a unique start of it, or the prefix")],
) -> None:
    """Create or rotate the key's webhook signing secret and print it alone on stdout (once);
    deliveries signed from now on use it, and the old secret stops verifying."""
    from models.errors import GenqError
    from models.keys import rotate_webhook_secret

    try:
        with session_scope(_engine()) as session:
            key, secret = rotate_webhook_secret(session, ref=ref)
            key_id = key.id
    except GenqError as exc:
        raise fail(exc.detail) from None
    _announce_change(key_id)
    console.print(f"new webhook signing secret of key {key_id}; it is shown only once")
    print(secret)


def _announce_change(key_id: str) -> None:
    """Tell the API processes (after the commit) to drop their cached copy of the key; when
    Redis cannot take it the change stands, and the cache's TTL bounds the delay."""
    from models.key_events import announce_key_changed

    settings = get_settings()
    reason = announce_key_changed(settings.redis_url, key_id)
    if reason is not None:
        console.print(
            f"warning: could not tell the API processes through Redis ({reason}); one that "
            f"served key {key_id} in the last GENQ_AUTH_CACHE_S ({settings.auth_cache_s:g} s "
            "here) keeps its old state until then",
            markup=False,
        )


def _key_row(key) -> dict:
    """A key as `keys list --json` shows it: money as exact decimal strings (`"0.0000001"`)."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
        "revoked": key.revoked_at is not None,
        "budget_usd": None if key.budget_usd is None else money(key.budget_usd),
        "period": key.budget_period,
        "spent_usd": money(key.spent_usd),
        "reserved_usd": money(key.reserved_usd),
        #: None: the key's jobs get GENQ_MODERATION unless they set policy.moderation
        "moderation": key.moderation,
        "webhook_url_host": host_of(key.webhook_url) if key.webhook_url else None,
        "webhook_secret_set": key.webhook_secret is not None,
    }


#: `keys list` as a table: ids and money whole, the name wraps
KEY_COLUMNS = (
    Column("id", "id", keep=True),
    Column("name", "name"),
    Column("prefix", "prefix", keep=True),
    Column("budget_usd", "budget $", keep=True, justify="right"),
    Column("period", "period"),
    Column("spent_usd", "spent $", keep=True, justify="right"),
    Column("reserved_usd", "reserved $", keep=True, justify="right"),
    Column("moderation", "moderation"),
    Column("revoked", "revoked"),
)


@keys_app.command("list")
def keys_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key with its budget, spending and reservations (never the secrets)."""
    from models.keys import list_keys

    with session_scope(_engine()) as session:
        rows = [_key_row(k) for k in list_keys(session)]
    if json_out:
        print_json(rows)
        return
    cells = [
        {
            **r,
            "budget_usd": r["budget_usd"] or "-",
            "moderation": r["moderation"] or "default",
            "revoked": "yes" if r["revoked"] else "no",
        }
        for r in rows
    ]
    show_table(KEY_COLUMNS, cells)


@keys_app.command("revoke")
def keys_revoke(
    ref: Annotated[str, typer.Argument(help="Key id, a unique start of it, or the prefix")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the revoked key as JSON")] = False,
):
    """Revoke a key: it answers 401 from now on; its jobs and usage stay."""
    from models.errors import GenqError
    from models.keys import revoke_key

    try:
        with session_scope(_engine()) as session:
            key = revoke_key(session, ref=ref)
            row = _key_row(key)
    except GenqError as exc:
        raise fail(exc.detail) from None
    _announce_change(row["id"])
    if json_out:
        print_json(row)
    else:
        out.print(f"revoked key {row['id']} ({row['name']})", markup=False)


def usage(
    group_by: Annotated[str, typer.Option(help="model, day, key or status")] = "model",
    start: Annotated[str | None, typer.Option("--from", help="ISO date or datetime")] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="ISO date (inclusive) or datetime")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Only this key: its id, a unique start of it, or prefix")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Spending across all keys (or one), as a table or JSON."""
    from models.errors import GenqError
    from models.keys import find_key
    from models.usage import parse_bound, usage_report

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
        print_json(report)
        return
    _show_usage(report)


#: the usage table after its group column: short headers, so it fits 80 columns when it can
USAGE_COLUMNS = (
    Column("jobs", "jobs", justify="right"),
    Column("attempts", "attempts", justify="right"),
    Column("prompt_tokens", "prompt tok", justify="right"),
    Column("completion_tokens", "output tok", justify="right"),
    Column("cost_usd", "cost $", keep=True, justify="right"),
    Column("reserved_usd", "reserved $", keep=True, justify="right"),
    Column("moderation_blocked", "blocked", justify="right"),
    Column("cache_hits", "hits", justify="right"),
    Column("saved_usd", "saved $", keep=True, justify="right"),
)


def _show_usage(report: dict) -> None:
    group_by = report["group_by"]
    columns = [Column(group_by, group_by, keep=True)]
    if group_by == "key":
        columns.append(Column("name", "name"))
    rows = [
        {
            group_by: str(row[group_by]),
            "name": str(row.get("name") or ""),
            **{c.field: _cell(row[c.field]) for c in USAGE_COLUMNS},
        }
        for row in [*report["data"], {group_by: "total", **report["total"]}]
    ]
    show_table([*columns, *USAGE_COLUMNS], rows, title=f"usage by {group_by}")


def _cell(value) -> str:
    return money(value) if isinstance(value, Decimal) else str(value)


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
    if json_out:
        print_json(summary)
    else:
        print(table)
    console.print(f"results: {summary['file']}")
    if not (summary["target_met"] and summary["no_job_over_ceiling"]):
        raise typer.Exit(1)


def bench_chaos(
    jobs: Annotated[int, typer.Option(help="Jobs to run", min=10)] = 1000,
    workers: Annotated[int, typer.Option(help="Worker processes", min=2)] = 3,
    concurrency: Annotated[int, typer.Option(help="`genq worker --concurrency`", min=1)] = 8,
    http: Annotated[
        bool, typer.Option("--http", help="through the openai SDK and `genq simulator`")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fault run: provider 429/503s and a worker SIGKILLed mid-run; prints the invariant counts."""
    from bench.chaos import run_chaos, save
    from models.logging import configure_logging
    from models.tokens import install_encodings

    settings = get_settings()
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    directory = install_encodings(settings.tiktoken_cache_dir)
    with console.status(f"chaos run: {jobs} jobs, {workers} workers, one killed"):
        summary = run_chaos(
            jobs=jobs,
            workers=workers,
            tiktoken_dir=directory,
            concurrency=concurrency,
            http=http,
        )
    if json_out:
        print_json(summary)
    else:
        table = Table("count", "value", title="genq chaos run")
        for name, value in summary.items():
            table.add_row(name, str(value))
        out.print(table)
    console.print(f"results: {save(summary)}")
    broken = [k for k, v in summary.items() if "must be 0" in k and v]
    if broken or summary["succeeded"] != jobs:
        raise typer.Exit(1)
