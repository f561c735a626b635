"""The `genq bench` command's body: build the config, run, print the table and where files went."""

from __future__ import annotations

import sys

from rich.console import Console

from bench.config import DEFAULT_SCENARIOS, BenchConfig
from bench.procs import BenchError
from models.settings import get_settings


def run_from_cli(options: dict, *, scenarios: list[str] | None, quick: bool) -> int:
    """Exit code: 0 when every phase ran, 1 when one failed (missed targets are not errors)."""
    console = Console(stderr=True, highlight=False)
    try:
        config = BenchConfig(
            **options,
            scenarios=tuple(scenarios or DEFAULT_SCENARIOS),
            tiktoken_dir=get_settings().tiktoken_cache_dir,
        )
        config = (config.quick() if quick else config).check()
    except (TypeError, ValueError) as exc:
        console.print(f"[red]genq: {exc}[/]")
        return 2
    console.print(
        f"genq bench: {config.database} database, Redis {config.redis_url}, "
        f"{config.workers} x {config.concurrency} threads, L = {config.latency_ms} ms"
    )
    from bench.run import run_bench

    try:
        data, json_path, md_path = run_bench(config, console)
    except BenchError as exc:
        console.print(f"[red]genq: bench failed: {exc}[/]")
        return 1
    print(data["markdown"])
    missed = [t["name"] for t in data["targets"] if t["met"] is False]
    console.print(f"results: {json_path} and {md_path} ({data['seconds']:.0f} s)")
    if missed:
        console.print(f"targets missed: {', '.join(missed)}")
    for name, error in data["errors"].items():
        console.print(f"[red]genq: bench scenario {name} failed: {error}[/]")
    sys.stdout.flush()
    return 1 if data["errors"] else 0
