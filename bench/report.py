"""Turning a run's results into ratios, target checks, a Markdown table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class Target:
    """One goal from the issue: a measured value against a bound."""

    name: str
    value: float | None
    bound: float
    higher_is_better: bool = True

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound

    def public(self) -> dict:
        return {**asdict(self), "met": self.met}


def machine() -> dict:
    """What the numbers were measured on: they only mean something next to this."""
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((ln.split(":", 1)[1].strip() for ln in info if "model name" in ln), "")
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


def _get(data: dict, *path: str):
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 3) if top and bottom else None


def ratios(scenarios: dict) -> dict:
    """genq / limit and genq / naive at the latency-bound point, genq / limit at peak, batch
    submits over single ones."""
    genq = _get(scenarios, "throughput", "genq", "jobs_per_s")
    steps = _get(scenarios, "scaling", "steps") or []
    two = next((s for s in steps if s["workers"] == 2), None)
    return {
        "efficiency": _get(scenarios, "throughput", "genq", "efficiency"),
        "genq_over_limit": _ratio(genq, _get(scenarios, "throughput", "limit", "jobs_per_s")),
        "genq_over_naive": _ratio(genq, _get(scenarios, "throughput", "naive", "jobs_per_s")),
        "peak_genq_over_limit": _ratio(
            _get(scenarios, "peak", "genq", "jobs_per_s"),
            _get(scenarios, "peak", "limit", "jobs_per_s"),
        ),
        "scaling_at_2": two["speedup_vs_first"] if two else None,
        "batch_over_single": _ratio(
            _get(scenarios, "enqueue", "batch", "jobs_per_s"),
            _get(scenarios, "enqueue", "submits_per_s"),
        ),
    }


def targets(scenarios: dict, ratio: dict) -> list[Target]:
    """The issue's targets for this 2-core machine; a skipped scenario gives no verdict."""
    return [
        Target(name="efficiency at the latency-bound point", value=ratio["efficiency"], bound=0.9),
        Target(name="genq / asyncio limit", value=ratio["genq_over_limit"], bound=0.9),
        Target(
            name="added latency p50 (ms)",
            value=_get(scenarios, "latency", "added_ms", "p50"),
            bound=15,
            higher_is_better=False,
        ),
        Target(
            name="added latency p99 (ms)",
            value=_get(scenarios, "latency", "added_ms", "p99"),
            bound=50,
            higher_is_better=False,
        ),
        Target(
            name="single submits/s",
            value=_get(scenarios, "enqueue", "submits_per_s"),
            bound=500,
        ),
        Target(name="genq / naive Celery", value=ratio["genq_over_naive"], bound=10),
        Target(name="scaling 1 → 2 processes", value=ratio["scaling_at_2"], bound=1.8),
        *_inflight_targets(scenarios),
    ]


def _inflight_targets(scenarios: dict) -> list[Target]:
    """Issue 17's in-flight targets, for the one-process run they were set for (C = N = 1000,
    L = 5 s); another setting gives no verdict."""
    run = scenarios.get("inflight")
    if not run or (run["workers"], run["threads"], run["latency_ms"]) != (1, 1000, 5000):
        return []
    return [
        Target(name="calls in flight in one process", value=run["peak_in_flight"], bound=900),
        Target(name="in-flight jobs/s (ideal 200)", value=run["jobs_per_s"], bound=150),
        Target(
            name="in-flight peak RSS (MiB)",
            value=max(run["rss_mib_under_load"].values()),
            bound=300,
            higher_is_better=False,
        ),
    ]


def write(report: dict, output_dir: Path, stamp: str) -> tuple[Path, Path]:
    """`<stamp>.json` and `<stamp>.md` in `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path = output_dir / f"{stamp}.md"
    md_path.write_text(report["markdown"] + "\n")
    return json_path, md_path
