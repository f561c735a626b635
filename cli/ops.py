"""Operating genq from the command line: Flower with a login, worker metrics, workers and stats."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from cli.client import ClientError, GenqClient
from cli.render import console, print_json
from models.queue import ALL_QUEUES
from models.settings import Settings, get_settings

#: Flower options that already put a login in front of it
FLOWER_AUTH_OPTIONS = ("--basic-auth", "--basic_auth", "--auth")
#: Celery pools whose tasks run in the process that serves the metrics endpoint
METRICS_POOLS = ("threads", "solo")


class OpsError(Exception):
    """One line telling the operator what to change."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn an OpsError or ClientError into one red line on stderr and exit code 1."""
    try:
        yield
    except (OpsError, ClientError) as exc:
        console.print(f"[red]genq: {exc}[/]")
        raise typer.Exit(1) from None


def auth_option_given(args: list[str]) -> bool:
    """The caller passed Flower an auth option of its own (`--basic-auth=…`, `--auth=…`)."""
    return any(arg.split("=", 1)[0] in FLOWER_AUTH_OPTIONS for arg in args)


def flower_argv(settings: Settings, args: list[str], *, unauthenticated: bool) -> list[str]:
    """Flower's options with the login from GENQ_FLOWER_BASIC_AUTH added when none is given.

    The password goes to Flower in-process, never on a command line (`ps` would show it).
    """
    if auth_option_given(args):
        return list(args)
    if settings.flower_basic_auth is not None:
        return [f"--basic-auth={settings.flower_basic_auth.get_secret_value()}", *args]
    if unauthenticated:
        return list(args)
    raise OpsError(
        "Flower needs a login: set GENQ_FLOWER_BASIC_AUTH=user:password "
        "(or pass --unauthenticated to run it open, on a trusted network only)"
    )


def refuse_unmigrated(settings: Settings) -> None:
    """An API or a worker on a database behind this genq's schema (or empty) would fail every
    request or job it takes: it does not start (one read of `alembic_version`, in the command's
    own process, before uvicorn or Celery starts any other)."""
    from cli.database import refuse_behind
    from models.db import get_engine

    if reason := refuse_behind(get_engine(settings.database_url)):
        raise OpsError(reason)


def run_api(*, host: str, port: int, workers: int) -> None:
    """uvicorn with `workers` processes on one port; with several, metrics are summed over all.

    Settings, the schema and the port are checked here, before any process starts, so a bad
    setting, a database behind the code or a taken port is one line; the check's engine is
    disposed before uvicorn starts (API processes are spawned, and open their own). This
    supervisor imports no route: whatever it imports delays the first API process.
    prometheus_client's multiprocess mode keeps each process's counters in files of a directory
    named by PROMETHEUS_MULTIPROC_DIR; it must be empty at start, so every run gets a fresh one.
    """
    import os
    import tempfile

    import uvicorn

    from api.multiproc import MULTIPROC_ENV
    from cli.ports import bind_error

    settings = get_settings()
    with one_line_errors():
        refuse_unmigrated(settings)
        if reason := bind_error(host, port):
            raise OpsError(
                f"cannot serve the API on {host}:{port}: {reason} (another genq api may "
                "still be running there; stop it or pass --port)"
            )
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,  # api/request_id.py writes the access line, with the request id
    }
    if workers == 1:
        uvicorn.run("cli.ops:api_process_app", **options)
        return
    with tempfile.TemporaryDirectory(prefix="genq-api-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory
        uvicorn.run("cli.ops:api_process_app", workers=workers, **options)


def api_process_app():
    """uvicorn's factory: an API process started by `--workers N` dies with its supervisor
    (were the supervisor SIGKILLed, it would otherwise go on serving the shared port)."""
    import multiprocessing

    from api.main import app_factory
    from cli.children import die_with_parent

    if (parent := multiprocessing.parent_process()) is not None:
        die_with_parent(parent.pid)
    return app_factory()


def run_flower(args: list[str], *, unauthenticated: bool) -> None:
    """Start Flower on genq's broker, refusing to run without a login unless told explicitly."""
    from cli.flower_options import FlowerOptionError, normalise
    from worker.celery_app import celery_app

    settings = get_settings()
    with one_line_errors():
        try:
            args = normalise(args)
        except FlowerOptionError as exc:
            raise OpsError(str(exc)) from None
        argv = flower_argv(settings, args, unauthenticated=unauthenticated)
    if argv == args and not auth_option_given(args):
        console.print(
            "[yellow]genq: WARNING: Flower runs WITHOUT authentication (--unauthenticated): "
            "anyone who reaches its port can see and control the workers[/]"
        )
    celery_app.start(["flower", *argv])


def run_worker(args: list[str], *, metrics_port: int | None) -> None:
    """Start a Celery worker (default: every queue, interactive before the batch lanes) and, if
    asked, its metrics endpoint."""
    from worker.celery_app import celery_app

    settings = get_settings()
    if not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in args):
        args = ["-Q", ",".join(ALL_QUEUES), *args]
    with one_line_errors():
        refuse_unmigrated(settings)
        check_autoscale(args)
        start_worker_metrics(settings, metrics_port, args)
    celery_app.worker_main(["worker", "--loglevel", settings.log_level, *args])


def pool_of(args: list[str]) -> str | None:
    """The Celery pool named in worker options (`-P x`, `--pool x`, `--pool=x`), if any."""
    for i, arg in enumerate(args):
        if arg.startswith("--pool="):
            return arg.split("=", 1)[1]
        if arg in ("-P", "--pool") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("-P") and len(arg) > 2:
            return arg[2:]
    return None


def check_autoscale(args: list[str]) -> None:
    """Refuse `--autoscale` on the threads pool: Celery's thread pool cannot grow, and the worker
    would die with "'TaskPool' object has no attribute 'grow'" at its first scale-up."""
    wants = any(arg == "--autoscale" or arg.startswith("--autoscale=") for arg in args)
    if wants and pool_of(args) in (None, "threads"):
        raise OpsError(
            "--autoscale needs a pool that can grow (prefork, gevent); with genq's threads pool "
            "set --concurrency to the most jobs one process may run and scale processes on "
            "queue depth instead (docs/operations.md)"
        )


def start_worker_metrics(settings: Settings, port: int | None, args: list[str]) -> int | None:
    """Serve this worker's metrics when a port is given (option, else setting; 0 = off)."""
    port = settings.worker_metrics_port if port is None else port
    if not port:
        return None
    if (pool := pool_of(args)) not in (None, *METRICS_POOLS):
        raise OpsError(
            f"--metrics-port needs the threads pool (its tasks share one process), not {pool}"
        )
    from worker.metrics import serve_from_settings

    try:
        bound = serve_from_settings(settings, port)
    except OSError as exc:
        raise OpsError(f"cannot serve worker metrics on port {port}: {exc.strerror}") from None
    console.print(f"worker metrics on http://{settings.worker_metrics_host}:{bound}/metrics")
    return bound


def live_workers(timeout_s: float) -> list[dict[str, Any]]:
    """Workers that answer a broadcast: hostname, queues, concurrency and the jobs they run."""
    from worker.celery_app import celery_app

    inspect = celery_app.control.inspect(timeout=timeout_s)
    queues = inspect.active_queues() or {}
    active = inspect.active() or {}
    stats = inspect.stats() or {}
    return [
        {
            "worker": name,
            "queues": sorted(q["name"] for q in queues.get(name, [])),
            "concurrency": stats.get(name, {}).get("pool", {}).get("max-concurrency"),
            "active_jobs": [_job_id_of(task) for task in active.get(name, [])],
        }
        for name in sorted({*queues, *active, *stats})
    ]


def _job_id_of(task: dict[str, Any]) -> str:
    """The job id a running task carries (its only argument), as a list or as Celery's repr."""
    args = task.get("args")
    if isinstance(args, list | tuple) and args:
        return str(args[0])
    return str(args or "").strip("[]()'\", ")


def show_workers(*, json_out: bool, timeout_s: float = 1.0) -> None:
    """`genq status workers`: one line per live worker; exit 1 when none answers."""
    with one_line_errors():
        workers = _inspect(timeout_s)
        if not workers:
            raise OpsError(f"no live worker answered within {timeout_s:g}s")
    if json_out:
        print_json(workers)
    for worker in [] if json_out else workers:
        jobs = ", ".join(worker["active_jobs"]) or "-"
        print(
            f"{worker['worker']}  queues={','.join(worker['queues'])}  "
            f"concurrency={worker['concurrency']}  active={len(worker['active_jobs'])}  jobs={jobs}"
        )


def _inspect(timeout_s: float) -> list[dict[str, Any]]:
    try:
        return live_workers(timeout_s)
    except Exception as exc:  # kombu raises transport-specific errors
        raise OpsError(f"cannot reach the broker ({type(exc).__name__})") from None


def stats(json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Show your jobs by status, your oldest queued job's age and the queue depths."""
    settings = get_settings()
    with one_line_errors():
        if settings.api_key is None:
            raise OpsError("set GENQ_API_KEY to a key from `genq keys create NAME`")
        body = GenqClient(settings.api_url, settings.api_key.get_secret_value()).stats()
    if json_out:
        print_json(body)
        return
    counts = "  ".join(f"{status}={count}" for status, count in body["jobs"].items())
    age, queues = body["oldest_queued_age_s"], body["queues"]
    print(f"jobs: {counts}")
    print(f"oldest queued job: {'none' if age is None else f'{age:.1f}s'}")
    depth = "unavailable" if queues is None else "  ".join(f"{q}={n}" for q, n in queues.items())
    print(f"queue depth: {depth}")
