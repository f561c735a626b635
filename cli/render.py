"""Where the CLI writes: results on stdout (`out`), diagnostics on stderr (`console`); how it
shows jobs: a short summary for people, JSON for scripts; money always through `money()`."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from models.jsontext import dumps
from models.money import money

#: diagnostics: progress, warnings, errors. soft_wrap: a message is one line however long
#: (scripts grep them)
console = Console(stderr=True, highlight=False, soft_wrap=True)
#: results: what a command was run for (`genq usage > report.txt` holds the report)
out = Console(highlight=False, soft_wrap=True)


def job_summary(job: dict, *, api_url: str = "") -> str:
    """A few lines: status, model, output, usage and cost."""
    usage = job.get("usage") or {}
    estimate = job.get("estimated_cost_usd")
    lines = [
        f"job {job['id']}  {job['kind']}  [bold]{job['status']}[/]  model={job['model']} "
        f"provider={job.get('provider')} attempts={job['attempts']}",
        f"  usage: {usage.get('prompt_tokens', 0)} prompt + "
        f"{usage.get('completion_tokens', 0)} completion tokens; "
        f"cost ${money(job['cost_usd'])}"
        + ("" if estimate is None else f" (estimated ≤ ${money(estimate)})"),
    ]
    output = job.get("output") or {}
    if "text" in output:
        lines.append(f"  text: {escape(output['text'])}")
    for call in output.get("tool_calls", []):
        function = call["function"]
        lines.append(
            f"  tool call {call['id']}: {function['name']}({escape(function['arguments'])})"
        )
    for image in output.get("images", []):
        lines.append(f"  image: {api_url}{image['url']} ({image['content_type']})")
    if job.get("error"):
        lines.append(f"  error: {job['error']['type']}: {escape(job['error']['message'])}")
    for stage, verdict in (job.get("moderation") or {}).items():
        if verdict:
            lines.append(f"  moderation {stage}: {_verdict(verdict)}")
    return "\n".join(lines)


def _verdict(verdict: dict) -> str:
    """`flagged (violence)`, `passed`, or `not checked (…)`; `synthetic` from the stand-in."""
    if verdict.get("error"):
        said = f"not checked ({escape(verdict['error'])})"
    elif verdict["flagged"]:
        said = f"flagged ({', '.join(verdict['categories'])})"
    else:
        said = "passed"
    return said + (", synthetic" if verdict.get("synthetic") else "")


def print_json(data: Any) -> None:
    """Indented JSON on stdout; Decimal amounts as plain numbers (`0.0000258`)."""
    print(dumps(data, indent=True))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear line on stderr and return the exit to raise."""
    console.print(f"[red]genq: {escape(message)}[/]")
    return typer.Exit(code)
