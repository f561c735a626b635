"""`genq chat`: send one message of a conversation, wait for the reply, print it.

The reply alone goes to stdout (so `reply=$(genq chat ID "…")` works); the new conversation's id
(`--new`), the spinner and errors go to stderr.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cli.client import ClientError, GenqClient
from cli.render import console, fail, print_json

#: what a failed or cancelled reply exits with (as `genq submit --wait`)
EXIT_JOB_FAILED = 3


def _settings(
    system: str | None,
    model: str | None,
    tier: str | None,
    context_tokens: int | None,
    max_tokens: int | None,
) -> dict:
    body = {"system": system, "model": model, "context_tokens": context_tokens}
    body = {k: v for k, v in body.items() if v is not None}
    if tier:
        body["policy"] = {"tier": tier}
    if max_tokens:
        body["params"] = {"max_tokens": max_tokens}
    return body


def _wait(client: GenqClient, job: dict, timeout_s: float) -> dict:
    with console.status(f"waiting for the reply (job {job['id']})") as status:
        return client.wait(
            job["id"],
            timeout_s=timeout_s,
            on_poll=lambda j: status.update(f"waiting for the reply (job {j['id']} {j['status']})"),
        )


def chat(
    target: Annotated[str, typer.Argument(help="CONVERSATION_ID (or, with --new, the message)")],
    message: Annotated[str | None, typer.Argument(help="The message to send")] = None,
    new: Annotated[bool, typer.Option("--new", help="Start a new conversation")] = False,
    system: Annotated[str | None, typer.Option(help="--new: the system message")] = None,
    model: Annotated[str | None, typer.Option(help="--new: pin the model")] = None,
    tier: Annotated[str | None, typer.Option(help="--new: economy, balanced or premium")] = None,
    context_tokens: Annotated[
        int | None, typer.Option(help="--new: prompt budget of each message's job", min=1)
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="--new: reply token limit", min=1)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply")] = 300,
    json_out: Annotated[bool, typer.Option("--json", help="Print the reply's job as JSON")] = False,
) -> None:
    """Send a message to a conversation and print the reply (`--new` starts one)."""
    from cli.main import _client  # where GENQ_API_URL and GENQ_API_KEY are read and checked

    settings = _settings(system, model, tier, context_tokens, max_tokens)
    if new == (message is not None):
        raise fail("give CONVERSATION_ID and MESSAGE, or --new and MESSAGE")
    if settings and not new:
        raise fail("--system, --model, --tier, --context-tokens and --max-tokens need --new")
    client = _client()
    try:
        if new:
            conversation_id = client.create_conversation(settings)["id"]
            console.print(f"conversation {conversation_id}")
        else:
            conversation_id = target
        job = _wait(client, client.send_message(conversation_id, message or target), timeout)
    except ClientError as exc:
        raise fail(str(exc)) from None
    if json_out:
        print_json(job)
    elif job["status"] == "succeeded":
        sys.stdout.write(job["output"]["text"] + "\n")
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        reason = f"{error.get('type')}: {error.get('message')}" if error else job["status"]
        raise fail(
            f"job {job['id']} {job['status']} ({reason}); no turn was added", EXIT_JOB_FAILED
        )
