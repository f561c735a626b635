"""How the CLI shows jobs: a short Rich summary for people, JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

#: soft_wrap: a message is one line however long (scripts grep them); tables still fit the width
console = Console(stderr=True, highlight=False, soft_wrap=True)


def job_summary(job: dict, *, api_url: str = "") -> str:
    """A few lines: status, model, output, usage and cost."""
    usage = job.get("usage") or {}
    lines = [
        f"job {job['id']}  {job['kind']}  [bold]{job['status']}[/]  model={job['model']} "
        f"provider={job.get('provider')} attempts={job['attempts']}",
        f"  usage: {usage.get('prompt_tokens', 0)} prompt + "
        f"{usage.get('completion_tokens', 0)} completion tokens; "
        f"cost ${job['cost_usd']:.7f} (estimated ≤ ${job.get('estimated_cost_usd') or 0:.7f})",
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
    return "\n".join(lines)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear line on stderr and return the exit to raise."""
    console.print(f"[red]genq: {message}[/]")
    return typer.Exit(code)
