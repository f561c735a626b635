"""The `genq` command line: run the parts of genq, manage keys, submit and inspect jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli import ops
from cli.accounts import bench_chaos, bench_savings, keys_app, usage
from cli.batches import batch_app
from cli.chat import chat
from cli.client import ClientError, GenqClient
from cli.render import console, fail, job_summary, out, print_json
from cli.schema_file import response_format
from models.settings import get_settings

app = typer.Typer(
    help="genq: distributed text and image generation jobs.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(keys_app, name="keys")
app.add_typer(batch_app, name="batch")
app.command()(usage)
app.command("bench-savings")(bench_savings)
app.command("bench-chaos")(bench_chaos)
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command()
def migrate() -> None:
    """Upgrade the database in GENQ_DATABASE_URL to the newest schema."""
    from models.migrate import current_revision, upgrade

    url = get_settings().database_url
    try:
        upgrade(url)
    except Exception as exc:
        raise fail(f"migration failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    out.print(f"database migrated to revision {current_revision(url)}")


@app.command()
def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="API processes sharing the port (one per core)")
    ] = 1,
) -> None:
    """Serve the REST API with uvicorn."""
    ops.run_api(host=host, port=port, workers=workers)


@app.command(context_settings=PASS_THROUGH)
def worker(
    ctx: typer.Context,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics here (0 = off)")
    ] = None,
) -> None:
    """Run a Celery worker; Celery options (--concurrency, --hostname, -Q …) pass through."""
    ops.run_worker(list(ctx.args), metrics_port=metrics_port)


@app.command(context_settings=PASS_THROUGH)
def flower(
    ctx: typer.Context,
    unauthenticated: Annotated[
        bool, typer.Option(help="Run without a login (warns); else GENQ_FLOWER_BASIC_AUTH")
    ] = False,
) -> None:
    """Run Flower, the Celery monitor; Flower options (--port, --address …) pass through."""
    ops.run_flower(list(ctx.args), unauthenticated=unauthenticated)


@app.command()
def simulator(
    host: str = "127.0.0.1",
    port: int = 8100,
    latency_ms: Annotated[int | None, typer.Option(help="default GENQ_OFFLINE_LATENCY_MS")] = None,
    faults: Annotated[str | None, typer.Option(help="e.g. 429:0.3,500:0.1")] = None,
    retry_after: Annotated[float, typer.Option(help="Retry-After seconds on 429")] = 1.0,
    invalid_output: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="default GENQ_OFFLINE_INVALID_OUTPUT"),
    ] = None,
) -> None:
    """Serve the offline simulator as an OpenAI-compatible API (synthetic outputs)."""
    import uvicorn

    from models.catalogue import get_catalogue
    from models.settings import parse_faults
    from models.tokens import install_encodings
    from worker.providers.simulator import Simulator
    from worker.simulator_server import create_simulator_app

    settings = get_settings()
    spec = settings.offline_faults if faults is None else faults
    try:
        parse_faults(spec)
    except ValueError as exc:
        raise fail(f"--faults: {exc}") from None
    install_encodings(settings.tiktoken_cache_dir)
    sim = Simulator.from_spec(
        latency_ms=settings.offline_latency_ms if latency_ms is None else latency_ms,
        faults=spec,
        retry_after_s=retry_after,
        invalid_output=(
            settings.offline_invalid_output if invalid_output is None else invalid_output
        ),
        flagged_words=settings.offline_flagged_words,
    )
    console.print(f"genq simulator on http://{host}:{port}/v1 (synthetic outputs)")
    uvicorn.run(
        create_simulator_app(sim, get_catalogue(settings.catalogue_path)),
        host=host,
        port=port,
        log_level="warning",
    )


def _client() -> GenqClient:
    settings = get_settings()
    if settings.api_key is None:
        raise fail("set GENQ_API_KEY to a key from `genq keys create NAME`")
    return GenqClient(settings.api_url, settings.api_key.get_secret_value())


@app.command()
def submit(
    prompt: Annotated[str, typer.Argument(help="The prompt")],
    kind: Annotated[str, typer.Option(help="text or image")] = "text",
    model: Annotated[str | None, typer.Option(help="Override the model choice")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Text: output token limit")] = None,
    size: Annotated[str | None, typer.Option(help="Image: e.g. 1024x1024")] = None,
    n: Annotated[int | None, typer.Option(help="Image: how many")] = None,
    tier: Annotated[str | None, typer.Option(help="economy, balanced or premium")] = None,
    max_cost_usd: Annotated[str | None, typer.Option(help="Hard cost ceiling for the job")] = None,
    moderation: Annotated[
        str | None, typer.Option(help="off, flag or block (default: the key's, else the API's)")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Makes a retried submit safe")] = None,
    schema: Annotated[
        Path | None, typer.Option(help="Text: a JSON Schema file the answer must match (strict)")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Poll until the job finishes")] = False,
    stream: Annotated[
        bool, typer.Option(help="Text: print the text as it is generated, then the job")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the job as JSON")] = False,
) -> None:
    """Submit a text or image job to the API at GENQ_API_URL."""
    params = {k: v for k, v in {"max_tokens": max_tokens, "size": size, "n": n}.items() if v}
    if schema is not None:
        try:
            params["response_format"] = response_format(schema)
        except ValueError as exc:
            raise fail(str(exc)) from None
    asked = {"tier": tier, "max_cost_usd": max_cost_usd, "moderation": moderation}
    policy = {k: v for k, v in asked.items() if v}
    body = {"kind": kind, "prompt": prompt, "params": params, "model": model, "policy": policy}
    if stream:
        body["stream"] = True
    client = _client()
    try:
        job = client.submit(body, idempotency_key=idempotency_key)
        if stream:
            from cli.stream import Follower

            job = Follower(client, job["id"]).follow()
        elif wait:
            with console.status(f"job {job['id']} queued") as status:
                job = client.wait(
                    job["id"],
                    on_poll=lambda j: status.update(
                        f"job {j['id']} {j['status']} (attempts: {j['attempts']})"
                    ),
                )
    except ClientError as exc:
        raise fail(str(exc)) from None
    _show(job, json_out)
    if job["status"] == "failed":
        raise typer.Exit(3)


@app.command("submit-batch")
def submit_batch(
    file: Annotated[str, typer.Argument(help="JSON Lines: one job request per line (- = stdin)")],
    idempotency_key: Annotated[
        str | None, typer.Option(help="Chunk i is sent with Idempotency-Key KEY-i")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON")] = False,
) -> None:
    """Submit many jobs from a file, 100 per request (`POST /v1/jobs/batch`)."""
    from cli.batch import BatchRefused, read_jobs, submit_all

    jobs = read_jobs(file)
    client = _client()
    try:
        accepted = submit_all(client, jobs, idempotency_key=idempotency_key)
    except BatchRefused as refused:
        if refused.accepted:  # real jobs: a script must learn their ids
            _show_batch(refused.accepted, json_out)
        raise fail(str(refused)) from None
    _show_batch(accepted, json_out)


def _show_batch(jobs: list[dict], json_out: bool) -> None:
    if json_out or not sys.stdout.isatty():
        print_json(jobs)
    else:
        for job in jobs:
            print(job["id"], job["status"], job["model"])


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="A job id, or `workers` for the live workers")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one job; `genq status workers` lists live workers, their queues and running jobs."""
    if job_id == "workers":
        return ops.show_workers(json_out=json_out)
    try:
        job = _client().job(job_id)
    except ClientError as exc:
        raise fail(str(exc)) from None
    _show(job, json_out)


app.command("stats")(ops.stats)
app.command("chat")(chat)


def _show(job: dict, json_out: bool) -> None:
    if json_out or not sys.stdout.isatty():
        print_json(job)
    else:
        out.print(job_summary(job, api_url=get_settings().api_url))
        if "json" in (job.get("output") or {}):  # the structured answer, pretty, on stdout
            print_json(job["output"]["json"])


@app.command()
def dev(
    api_port: int = 8000,
    flower_port: int = 5555,
    once: Annotated[bool, typer.Option(help="Exit after the demo jobs")] = False,
) -> None:
    """The demo: migrate, find Redis, start API + worker + Flower, run a text and an image job."""
    from cli.dev import run_demo

    raise typer.Exit(run_demo(api_port=api_port, flower_port=flower_port, once=once))


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Small counts: under a minute, noisier")] = False,
    jobs: Annotated[int, typer.Option(help="N: jobs at the latency-bound point")] = 640,
    workers: Annotated[int, typer.Option(help="W: worker processes")] = 2,
    concurrency: Annotated[int, typer.Option(help="C: threads per worker")] = 16,
    pool: Annotated[str | None, typer.Option(help="`genq worker --pool` (default: genq's)")] = None,
    latency_ms: Annotated[int, typer.Option(help="L: simulated model latency")] = 200,
    api_workers: Annotated[int, typer.Option(help="`genq api --workers` of the run")] = 2,
    batch_lines: Annotated[int, typer.Option(help="lines of the batch-api input file")] = 50_000,
    enqueue_submits: Annotated[
        int, typer.Option(help="single submits of the enqueue scenario (more: steadier)")
    ] = 1000,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="enqueue, throughput, peak, latency, scaling, batch-api (repeat; default: these); "
            "inflight"
        ),
    ] = None,
    database: Annotated[str, typer.Option(help="postgres (fresh database) or sqlite")] = "postgres",
    redis_url: Annotated[str, typer.Option(help="a Redis database the bench may flush")] = (
        "redis://127.0.0.1:6379/11"
    ),
) -> None:
    """Benchmark genq against an asyncio limit and naive Celery on `genq simulator` (loopback)."""
    from bench.cli import run_from_cli

    options = {"jobs": jobs, "workers": workers, "concurrency": concurrency}
    options |= {"api_workers": api_workers, "batch_lines": batch_lines, "pool": pool}
    options |= {"enqueue_submits": enqueue_submits}
    options |= {"latency_ms": latency_ms, "database": database, "redis_url": redis_url}
    raise typer.Exit(run_from_cli(options, scenarios=scenario, quick=quick))


def main() -> None:
    app()
