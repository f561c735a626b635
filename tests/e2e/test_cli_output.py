"""Output a script can use: results on stdout, ids and money whole, money in plain digits."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.keys import ApiKey, hash_secret
from tests.e2e.test_cli import genq
from tests.helpers import FakeProvider, auth
from worker.retry import RetryPolicy
from worker.runner import Runner

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]

#: a JSON number or a Decimal's text with an exponent: `1e-10`, `7.8e-05`, `0E-10`, `1.5e-8`; not
#: a run of an id's or a key prefix's characters (`…_5e8x…`, base64url)
EXPONENT = re.compile(r"(?<![\w-])\d+(\.\d+)?[eE][-+]?\d+(?![\w-])")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TINY_MODEL = """
[models."tiny-text"]
capabilities = ["text"]
kind = "text"
tier = "economy"
input_per_1m = 0.0001
cached_input_per_1m = 0.0001
output_per_1m = 0.0001
context_window = 100000
max_output_tokens = 1000
"""


def genq_tty(*args: str, env: dict[str, str], columns: int = 80) -> tuple[int, str, str]:
    """Run genq with stdout on a pseudo-terminal `columns` wide: (exit code, stdout, stderr)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env={**env, "COLUMNS": str(columns), "TERM": "xterm"},
        stdout=child,
        stderr=subprocess.PIPE,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    text = ANSI.sub("", b"".join(chunks).decode().replace("\r", ""))
    return code, text, stderr


@pytest.fixture
def tiny(env, settings, tmp_path):
    """A catalogue with a model whose every token costs 1e-10 USD, and the env that names it."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_MODEL)
    return {**env, "GENQ_CATALOGUE_PATH": str(path)}, settings.model_copy(
        update={"catalogue_path": path}
    )


def _key(env, name: str, *extra: str) -> tuple[str, str]:
    created = json.loads(genq("keys", "create", name, "--json", *extra, env=env).stdout)
    return created["id"], created["secret"]


def _run_tiny_job(settings, client, secret: str) -> dict:
    body = {"kind": "text", "prompt": "hello", "model": "tiny-text", "params": {"max_tokens": 50}}
    job_id = client.post("/v1/jobs", json=body, headers=auth(secret)).json()["id"]
    Runner(
        engine=get_engine(settings.database_url),
        provider=FakeProvider(),
        catalogue=get_catalogue(settings.catalogue_path),
        retry=RetryPolicy(max_attempts=1),
    ).run(job_id)
    return client.get(f"/v1/jobs/{job_id}", headers=auth(secret))


def test_tiny_amounts_are_plain_numbers_in_every_api_answer(tiny):
    env, settings = tiny
    _id, secret = _key(env, "plain")
    _id, poor = _key(env, "poor", "--budget-usd", "0.0000001")
    with TestClient(create_app(settings)) as client:
        shown = _run_tiny_job(settings, client, secret)
        # 150 tokens at 1e-10 USD: pydantic wrote 1.5e-8, Decimal's str 1.5E-8
        assert '"cost_usd":0.000000015,' in shown.text and not EXPONENT.search(shown.text)
        assert re.search(r'"estimate_usd":"0\.0000000\d+"', shown.text)  # the routing record
        listed = client.get("/v1/jobs", headers=auth(secret)).text
        usage = client.get("/v1/usage", headers=auth(secret)).text
        models = client.get("/v1/models", headers=auth(secret)).text
        assert '"cost_usd":0.000000015' in usage and '"input_per_1m":0.0001,' in models
        for text in (listed, usage, models):
            assert not EXPONENT.search(text), text
        job = {"kind": "text", "prompt": "hello", "model": "tiny-text"}
        refused = client.post("/v1/jobs", json=job, headers=auth(poor))
        assert refused.status_code == 402 and "0.0000001 USD left" in refused.json()["detail"]
        ceiling = {**job, "policy": {"max_cost_usd": 1e-12}}
        too_dear = client.post("/v1/jobs", json=ceiling, headers=auth(secret))
        assert too_dear.status_code == 422 and "max_cost_usd 0.000000000001" in too_dear.text
        for answer in (refused, too_dear):
            assert not EXPONENT.search(answer.text), answer.text


def test_usage_and_keys_go_to_stdout_whole_piped_and_at_80_columns(tiny, tmp_path):
    env, settings = tiny
    key_id, secret = _key(env, "a team with a rather long name", "--budget-usd", "0.0000001")
    with TestClient(create_app(settings)) as client:
        _run_tiny_job(settings, client, secret)
    report = tmp_path / "report.txt"
    with report.open("w") as handle:  # `genq usage > report.txt`
        redirected = subprocess.run(
            [sys.executable, "-m", "cli", "usage", "--group-by", "key"],
            env={**env, "COLUMNS": "80"},
            stdout=handle,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert redirected.returncode == 0 and redirected.stderr == ""
    lines = [line.split("\t") for line in report.read_text().splitlines()]
    assert lines[0][:2] == ["key", "name"] and lines[1][0] == key_id
    assert "0.000000015" in lines[1] and lines[-1][0] == "total"
    piped = genq("keys", "list", env={**env, "COLUMNS": "80"})
    assert piped.stderr == "" and key_id in piped.stdout and "\t0.0000001\t" in piped.stdout
    for args in (("keys", "list"), ("usage", "--group-by", "key")):
        code, shown, stderr = genq_tty(*args, env=env)
        assert code == 0 and stderr == "", stderr
        assert key_id in shown and "…" not in shown, shown
        assert ("0.0000001" if args[0] == "keys" else "0.000000015") in shown, shown
    as_json = genq("usage", "--json", env=env).stdout
    assert '"cost_usd": 0.000000015' in as_json and not EXPONENT.search(as_json)
    keys_json = genq("keys", "list", "--json", env=env).stdout
    assert '"spent_usd": "0.000000015"' in keys_json and not EXPONENT.search(keys_json)


def _store_key(settings, key_id: str) -> None:
    with session_scope(get_engine(settings.database_url)) as session:
        session.add(
            ApiKey(id=key_id, name=key_id, prefix="genq_x", secret_hash=hash_secret(key_id))
        )


def test_usage_and_revoke_take_a_unique_start_of_the_key_id(env, settings):
    key_id, _secret = _key(env, "shown")
    for key in ("abcd1234" + "0" * 24, "abcd5678" + "0" * 24):
        _store_key(settings, key)
    report = genq("usage", "--key", key_id[:8], "--json", env=env)
    assert report.returncode == 0 and json.loads(report.stdout)["total"]["jobs"] == 0
    for ref, needle in (("abcd", "give more of the id"), ("ffff", "no single key"), ("ab", "4")):
        refused = genq("usage", "--key", ref, env=env)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 1 and len(lines) == 1 and needle in lines[0], refused.stderr
    assert "abcd1234" + "0" * 24 in genq("usage", "--key", "abcd", env=env).stderr
    revoked = genq("keys", "revoke", "abcd1234", env=env)
    assert revoked.returncode == 0 and f"revoked key abcd1234{'0' * 24}" in revoked.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--port",), "--port needs a value"),
        (("--port", "abc"), "not a valid int"),
        (("--prot=5556",), "no option --prot"),
        (("5556",), "unexpected argument"),
        (("--debug=maybe",), "true or false"),
    ],
)
def test_flower_refuses_bad_options_in_one_line(env, args, needle):
    result = genq("flower", "--unauthenticated", *args, env=env, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr


def test_flower_takes_options_with_a_space_before_the_value(stack):
    from tests.helpers import free_port, wait_until

    port = free_port()
    stack.start(
        "flower", "flower", "--unauthenticated", "--port", str(port), "--address", "127.0.0.1"
    )
    wait_until(
        lambda: stack._answers(f"http://127.0.0.1:{port}/healthcheck", "flower"), what="Flower"
    )
