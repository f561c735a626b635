"""Bad settings, an unmigrated database and a taken port: one line on stderr, never a traceback."""

from __future__ import annotations

import socket
import subprocess

import pytest

from models.migrate import NOT_MIGRATED
from tests.helpers import free_port, genq

#: these commands do not care which database they talk to; SQLite keeps the tests quick
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


CATALOGUES = {
    "missing file": None,
    "bad TOML": "[models\n",
    "invalid entry": '[models."gpt-x"]\nkind = "text"\ntier = "economy"\n',
}


@pytest.mark.parametrize(
    ("command", "breakage"),
    [(("api",), "bad TOML"), (("worker",), "invalid entry"), (("dev", "--once"), "missing file")],
)
def test_a_broken_catalogue_stops_the_process_in_one_line_with_exit_2(
    env, tmp_path, command, breakage
):
    # Given GENQ_CATALOGUE_PATH naming a file that is missing, not TOML, or has a bad entry
    path = tmp_path / "catalogue.toml"
    if CATALOGUES[breakage] is not None:
        path.write_text(CATALOGUES[breakage])
    ports = {"api": ["--port", str(free_port())]}
    ports["dev"] = ["--api-port", str(free_port()), "--flower-port", str(free_port())]
    # When the API, a worker or the demo starts
    result = genq(
        *command,
        *ports.get(command[0], []),
        env={**env, "GENQ_CATALOGUE_PATH": str(path)},
        cwd=tmp_path,
        timeout=90,
    )
    # Then it refuses at once, like any invalid setting: one line naming variable and file
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("genq: invalid setting GENQ_CATALOGUE_PATH: ") and str(path) in line
    if breakage == "invalid entry":
        assert "gpt-x" in line and "context_window" in line


@pytest.mark.parametrize(
    "args",
    [("keys", "list"), ("keys", "create", "ops"), ("keys", "revoke", "abc"), ("usage",)],
)
def test_commands_on_an_unmigrated_database_say_run_genq_migrate(env, tmp_path, args):
    empty = {**env, "GENQ_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = genq(*args, env=empty)
    assert result.returncode == 1
    assert one_line(result) == f"genq: {NOT_MIGRATED}"


def test_api_on_a_taken_port_is_one_line_and_exit_1(env):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = genq("api", "--port", str(port), env=env)
    assert result.returncode == 1
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line and "another genq api may still be running" in line


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_api_key_says_how_to_get_one(env, blank):
    result = genq("status", "abc", env={**env, "GENQ_API_KEY": blank})
    assert result.returncode == 1
    assert "set GENQ_API_KEY to a key from `genq keys create NAME`" in one_line(result)


def test_an_api_url_ending_in_v1_reaches_the_api(stack, env):
    # Given GENQ_API_URL as the OpenAI SDKs spell a base URL, with /v1 (and a slash)
    api = stack.api()
    secret = genq("keys", "create", "cli", env=env).stdout.strip()
    client_env = {**env, "GENQ_API_URL": f"{api}/v1/", "GENQ_API_KEY": secret}
    # When a client command asks the API for a job
    result = genq("status", "no-such-job", env=client_env)
    # Then the API itself answered (its own 404 for the job, not a 404 for /v1/v1/…)
    assert result.returncode == 1
    assert "404 Job not found" in one_line(result)
