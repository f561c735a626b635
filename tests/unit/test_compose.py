"""docker-compose.yml and Dockerfile stay valid: no Docker engine runs here, so parse and check."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from cli.main import app
from models.queue import QUEUE_BY_KIND
from models.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def genq_commands() -> set[str]:
    names = {cmd.name or cmd.callback.__name__ for cmd in app.registered_commands}
    return names | {group.name for group in app.registered_groups}


def genq_services(compose: dict) -> dict[str, dict]:
    return {
        name: svc for name, svc in compose["services"].items() if svc.get("image") == "genq:latest"
    }


def test_compose_has_the_production_topology(compose):
    assert {"redis", "postgres", "migrate", "api", "worker-text", "worker-images", "flower"} <= set(
        compose["services"]
    )
    for name in ("redis", "postgres"):
        assert compose["services"][name]["healthcheck"]["test"]
        assert compose["services"][name]["volumes"]


def test_every_genq_service_runs_a_real_genq_command(compose):
    commands = genq_commands()
    services = genq_services(compose)
    assert len(services) == 5
    for name, svc in services.items():
        assert svc["command"][0] in commands, f"{name}: {svc['command']}"


def test_workers_consume_real_queues(compose):
    queues = set(QUEUE_BY_KIND.values())
    for name in ("worker-text", "worker-images"):
        command = compose["services"][name]["command"]
        assert set(command[command.index("-Q") + 1].split(",")) <= queues


def test_every_environment_variable_is_a_real_setting(compose):
    known = {f"GENQ_{field.upper()}" for field in Settings.model_fields}
    known |= {"OPENAI_API_KEY", "OPENAI_BASE_URL", "FLOWER_BASIC_AUTH"}
    for name, svc in genq_services(compose).items():
        for var in svc["environment"]:
            assert var in known, f"{name}: {var} is not a genq setting"


def test_flower_requires_authentication(compose):
    assert ":?" in compose["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"]


def test_dockerfile_entrypoint_exists():
    dockerfile = (ROOT / "Dockerfile").read_text()
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', dockerfile, re.M).group(1)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint in scripts
    assert re.search(r"^USER (?!root)", dockerfile, re.M) and "HEALTHCHECK" in dockerfile
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (ROOT / copied).exists(), copied
