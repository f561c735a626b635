"""README "Webhooks": the receiver's verification snippet, run against a real signed delivery."""

from __future__ import annotations

import re
from pathlib import Path

from standardwebhooks import Webhook

from models.db import utcnow
from models.webhook_events import signed_headers
from models.webhooks import new_secret

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_snippet() -> dict:
    section = README.read_text().split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    return scope


def test_the_readme_verification_accepts_genq_signatures_and_refuses_others():
    handle = readme_snippet()["handle"]
    secret, other = new_secret(), new_secret()
    body = '{"type":"job.succeeded","timestamp":"2026-12-01T00:00:00Z","data":{"id":"x"}}'
    headers = signed_headers(secret=secret, webhook_id="msg_1", body=body, now=utcnow())
    assert handle(body.encode(), headers, secret)["data"] == {"id": "x"}
    assert handle(body.encode(), headers, other) is None
    assert handle(body.replace("x", "y").encode(), headers, secret) is None
    # the signature is the spec's: v1,<base64 HMAC-SHA256 of "id.timestamp.body">
    moment = utcnow().replace(microsecond=0)
    assert headers["webhook-signature"] == Webhook(secret).sign("msg_1", moment, body) or (
        headers["webhook-timestamp"] != str(int(moment.timestamp()))
    )
