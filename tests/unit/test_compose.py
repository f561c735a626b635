"""docker-compose.yml, the Dockerfile and deploy/ stay valid: no Docker engine runs here, so parse.

Every service runs a real `genq` command with real options, every variable is a real setting,
every mounted config file exists and parses, and every metric the dashboard and the alerts use is
one genq really exports.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import typer.main
import yaml
from celery.bin.worker import worker as celery_worker
from flower.options import options as flower_options
from prometheus_client import REGISTRY

import api.metrics  # noqa: F401  (registers the API's metrics)
from cli.main import app
from models.queue import ALL_QUEUES
from models.settings import Settings
from worker import metrics as worker_metrics
from worker.shutdown import warm_shutdown_s

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: what an operator needs to see on the dashboard, as the metrics that show it
DASHBOARD_MUST_SHOW = {
    "queue depth": "genq_queue_depth",
    "jobs/s by status": "genq_jobs_total",
    "latency percentiles": "genq_attempt_duration_seconds_bucket",
    "tokens per model": "genq_tokens_total",
    "cost per model": "genq_cost_usd_total",
    "retries": "genq_retries_total",
    "rate-limit waits": "genq_rate_limit_wait_seconds_bucket",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def genq_command_options() -> dict[str, set[str]]:
    """Each `genq` command and the options genq itself declares for it."""
    group = typer.main.get_command(app)
    return {
        name: {opt for param in cmd.params for opt in param.opts}
        for name, cmd in group.commands.items()
    }


#: options that genq passes through to Celery's worker and to Flower
PASSED_THROUGH = {
    "worker": {opt for param in celery_worker.params for opt in param.opts},
    "flower": {f"--{name}" for name in flower_options._options}
    | {f"--{name.replace('-', '_')}" for name in flower_options._options},
}


def genq_services(compose: dict) -> dict[str, dict]:
    return {
        name: svc for name, svc in compose["services"].items() if svc.get("image") == "genq:latest"
    }


def exported_metric_names() -> set[str]:
    """Every sample name the API and the workers can serve."""
    families = [*REGISTRY.collect(), *worker_metrics.QueueCollector._families()]
    return {
        family.name + suffix for family in families for suffix in SUFFIXES.get(family.type, ("",))
    }


def genq_metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bgenq_[a-z0-9_]+", text))


def with_defaults(value: str) -> str:
    """A compose value with `${VAR:-default}` taken at its default (`${VAR:?…}` left empty)."""
    return re.sub(r"\$\{[A-Z_]+(?::-([^}]*)|:\?[^}]*)?\}", lambda m: m.group(1) or "", value)


def seconds(duration: str) -> float:
    """A compose duration such as `7m30s` or `90s`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_has_the_production_topology(compose):
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "api", "worker-text", "worker-images", "flower"} <= set(
        services
    )
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"]
        assert services[name]["volumes"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name


def test_every_genq_service_runs_a_real_genq_command_with_real_options(compose):
    commands = genq_command_options()
    services = genq_services(compose)
    assert len(services) == 5
    for name, svc in services.items():
        command, *args = svc["command"]
        assert command in commands, f"{name}: {svc['command']}"
        known = commands[command] | PASSED_THROUGH.get(command, set())
        for arg in args:
            if arg.startswith("-"):
                assert arg.split("=", 1)[0] in known, (
                    f"{name}: {arg} is not a `genq {command}` option"
                )
        assert "entrypoint" not in svc or svc["entrypoint"][0] == "genq", name


def test_workers_consume_real_queues(compose):
    queues = set(ALL_QUEUES)
    for name in ("worker-text", "worker-images"):
        command = compose["services"][name]["command"]
        assert set(command[command.index("-Q") + 1].split(",")) <= queues


def test_every_environment_variable_is_a_real_setting(compose):
    known = {f"GENQ_{field.upper()}" for field in Settings.model_fields}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        known |= set(getattr(alias, "choices", []))
    for name, svc in genq_services(compose).items():
        for var in svc["environment"]:
            assert var in known, f"{name}: {var} is not a genq setting"
        Settings(_env_file=None, **settings_values(svc["environment"]))


def settings_values(environment: dict[str, str]) -> dict[str, str]:
    """The GENQ_ values of a service as Settings keyword arguments, defaults substituted."""
    values = {
        var.removeprefix("GENQ_").lower(): with_defaults(str(value))
        for var, value in environment.items()
        if var.startswith("GENQ_")
    }
    return {key: value for key, value in values.items() if value}


def test_flower_requires_a_login(compose):
    env = compose["services"]["flower"]["environment"]
    assert ":?" in env["GENQ_FLOWER_BASIC_AUTH"]
    assert "--unauthenticated" not in compose["services"]["flower"]["command"]


def test_workers_get_the_time_a_running_job_may_still_need(compose):
    for name in ("worker-text", "worker-images"):
        svc = compose["services"][name]
        settings = Settings(_env_file=None, **settings_values(svc["environment"]))
        assert seconds(svc["stop_grace_period"]) >= warm_shutdown_s(settings), name


def test_workers_serve_metrics_where_prometheus_scrapes(compose):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    workers = jobs["genq-workers"]["dns_sd_configs"][0]
    assert set(workers["names"]) == {"worker-text", "worker-images"}
    for name in workers["names"]:
        svc = compose["services"][name]
        command = svc["command"]
        assert int(command[command.index("--metrics-port") + 1]) == workers["port"]
        assert svc["environment"]["GENQ_WORKER_METRICS_HOST"] == "0.0.0.0"
    api = jobs["genq-api"]["dns_sd_configs"][0]
    api_command = compose["services"]["api"]["command"]
    assert api["names"] == ["api"]
    assert int(api_command[api_command.index("--port") + 1]) == api["port"]


def test_every_mounted_config_file_exists(compose):
    mounted = [
        volume.split(":")[0]
        for svc in compose["services"].values()
        for volume in svc.get("volumes", [])
        if volume.startswith("./")
    ]
    assert len(mounted) >= 4
    for source in mounted:
        assert (ROOT / source).exists(), source
    for path in (DEPLOY / "prometheus").glob("*.yml"):
        assert yaml.safe_load(path.read_text()), path
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1, path


def test_dashboard_uses_only_metrics_genq_exports():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "genq.json").read_text())
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = genq_metric_names("\n".join(expressions))
    assert used <= exported_metric_names(), used - exported_metric_names()
    for topic, metric in DASHBOARD_MUST_SHOW.items():
        assert metric in used, f"the dashboard shows no {topic}"
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {datasources[0]["uid"]}


def test_alerts_use_only_metrics_genq_exports():
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    used = genq_metric_names("\n".join(rule["expr"] for rule in rules))
    assert used and used <= exported_metric_names(), used - exported_metric_names()
    assert all(rule["annotations"]["summary"] for rule in rules)


def test_dockerfile_entrypoint_exists():
    dockerfile = (ROOT / "Dockerfile").read_text()
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', dockerfile, re.M).group(1)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint in scripts
    assert re.search(r"^USER (?!root)", dockerfile, re.M) and "HEALTHCHECK" in dockerfile
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (ROOT / copied).exists(), copied
