"""The `genq` command line, run as a user would run it."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import free_port, genq

#: the CLI does not care which database it talks to; SQLite keeps these tests quick
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def test_keys_create_prints_only_the_secret_on_stdout(env):
    result = genq("keys", "create", "marketing", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("genq_")
    assert "marketing" in result.stderr


def test_submit_wait_and_status_through_the_api(stack, env):
    api = stack.api()
    stack.worker()
    secret = genq("keys", "create", "cli", env=env).stdout.strip()
    client_env = {**env, "GENQ_API_URL": api, "GENQ_API_KEY": secret}
    submitted = genq(
        "submit",
        "Write a tagline",
        "--max-tokens",
        "20",
        "--tier",
        "premium",
        "--max-cost-usd",
        "0.01",
        "--wait",
        "--json",
        env=client_env,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert '"status": "succeeded"' in submitted.stdout
    assert '"tier": "premium"' in submitted.stdout and '"max_cost_usd": "0.01"' in submitted.stdout
    job_id = submitted.stdout.split('"id": "', 1)[1].split('"', 1)[0]
    status = genq("status", job_id, env=client_env)
    assert status.returncode == 0 and job_id in status.stdout
    image = genq(
        "submit",
        "a fox",
        "--kind",
        "image",
        "--size",
        "256x256",
        "--n",
        "2",
        "--wait",
        env=client_env,
    )
    assert image.returncode == 0 and "/images/1" in image.stdout


def test_submit_with_a_schema_file_prints_the_parsed_json(stack, env, tmp_path):
    api = stack.api()
    stack.worker()
    secret = genq("keys", "create", "cli", env=env).stdout.strip()
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "tags": {"type": "array", "minItems": 2}},
        "required": ["title", "tags"],
        "additionalProperties": False,
    }
    path = tmp_path / "product page.json"
    path.write_text(json.dumps(schema))
    client_env = {**env, "GENQ_API_URL": api, "GENQ_API_KEY": secret}
    done = genq("submit", "A kettle page", "--schema", str(path), "--wait", env=client_env)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    assert (
        set(job["output"]["json"]) == {"title", "tags"} and len(job["output"]["json"]["tags"]) >= 2
    )
    assert json.loads(job["output"]["text"]) == job["output"]["json"]


def test_submit_batch_sends_a_file_in_chunks_and_names_the_refused_line(stack, env, tmp_path):
    api = stack.api()
    secret = genq("keys", "create", "cli", env=env).stdout.strip()
    client_env = {**env, "GENQ_API_URL": api, "GENQ_API_KEY": secret}
    lines = [json.dumps({"kind": "text", "prompt": f"Tagline {i}"}) for i in range(150)]
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("\n".join([*lines[:70], "", *lines[70:]]) + "\n")  # a blank line too
    sent = genq("submit-batch", str(jobs_file), "--idempotency-key", "c1", env=client_env)
    assert sent.returncode == 0, sent.stderr
    jobs = json.loads(sent.stdout)  # not a terminal: JSON
    assert len(jobs) == len({j["id"] for j in jobs}) == 150 and "150/150" in sent.stderr
    # Re-running with the same key submits nothing new (two chunks: keys c1-0 and c1-1)
    again = genq("submit-batch", str(jobs_file), "--idempotency-key", "c1", env=client_env)
    assert [j["id"] for j in json.loads(again.stdout)] == [j["id"] for j in jobs]
    # A refused job is named by its line; nothing is sent when a line is not JSON
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + json.dumps({"kind": "text", "model": "gpt-x"}) + "\n")
    refused = genq("submit-batch", str(bad), env=client_env)
    assert refused.returncode == 1 and "line 2" in refused.stderr, refused.stderr
    assert "no job was accepted" in refused.stderr
    late = tmp_path / "late.jsonl"  # the second chunk (jobs 101-150) holds the bad job
    late.write_text("\n".join([*lines[:119], json.dumps({"kind": "text"}), *lines[120:]]))
    partly = genq("submit-batch", str(late), env=client_env)
    assert partly.returncode == 1 and "line 120" in partly.stderr, partly.stderr
    assert "the 100 jobs before line 101 were accepted" in partly.stderr
    accepted = json.loads(partly.stdout)  # the accepted chunk's ids, for the script to keep
    assert len({j["id"] for j in accepted}) == 100 and partly.stderr.count("genq:") == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + "\n{oops\n")
    unsent = genq("submit-batch", str(broken), env=client_env)
    assert unsent.returncode == 1 and "line 2: not JSON" in unsent.stderr


@pytest.mark.parametrize(
    ("args", "extra_env", "needle"),
    [
        (("status", "abc"), {}, "GENQ_API_KEY"),
        (
            ("status", "abc"),
            {"GENQ_API_KEY": "genq_x", "GENQ_API_URL": "http://127.0.0.1:1"},
            "cannot reach",
        ),
        (("migrate",), {"GENQ_MAX_ATTEMPTS": "0"}, "GENQ_MAX_ATTEMPTS"),
        (("migrate",), {"GENQ_DATABASE_URL": "mysql://x"}, "GENQ_DATABASE_URL"),
        (("simulator", "--faults", "429:2"), {}, "--faults"),
        (("keys", "create", " "), {}, "NAME"),
        (("submit-batch", "/nonexistent/jobs.jsonl"), {}, "cannot read"),
        (("submit-batch", "/dev/null"), {}, "holds no jobs"),
        (("submit", "x", "--schema", "/nonexistent/page.json"), {}, "--schema"),
        (("submit", "x", "--schema", "/etc/hostname"), {}, "not JSON"),
    ],
)
def test_errors_are_one_clear_line_and_a_nonzero_exit(env, args, extra_env, needle):
    result = genq(*args, env={**env, **extra_env})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_api_refuses_a_worker_count_below_one_before_starting(env):
    result = genq("api", "--workers", "0", env=env)
    assert result.returncode == 2 and "--workers" in result.stderr


def test_status_of_an_unknown_job_says_404(stack, env):
    api = stack.api()
    secret = genq("keys", "create", "cli", env=env).stdout.strip()
    result = genq("status", "nope", env={**env, "GENQ_API_URL": api, "GENQ_API_KEY": secret})
    assert result.returncode == 1 and "404" in result.stderr


def test_dev_runs_the_whole_demo(env, tmp_path, settings):
    # The README's first command, on a database of its own, ending after the demo jobs
    api_port, flower_port = free_port(), free_port()
    result = genq(
        "dev",
        "--once",
        "--api-port",
        str(api_port),
        "--flower-port",
        str(flower_port),
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # progress on stderr; the results (key, jobs, usage, URLs) on stdout
    assert "OFFLINE SIMULATOR" in result.stderr and "submitted text job" in result.stderr
    out = result.stdout
    assert out.count("succeeded") == 2 and "API key for this demo" in out
    assert f"http://127.0.0.1:{api_port}/docs" in out and f"http://127.0.0.1:{flower_port}" in out
    assert "[synthetic]" in out and "usage for this key" in out
    assert f"Flower: http://127.0.0.1:{flower_port} (user genq, password " in out
    assert not re.search(r"\d[eE]-\d", out) and "cost $0." in out
