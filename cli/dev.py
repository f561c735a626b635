"""`genq dev`: the whole system on one machine, and a text and an image job through it."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import redis

from cli.children import describe_exit, spawn, stop_all
from cli.client import ClientError, GenqClient
from cli.ports import bind_error
from cli.render import console, job_summary, out
from models.db import get_engine, session_scope
from models.keys import create_key
from models.migrate import current_revision, upgrade
from models.money import money
from models.settings import Settings, get_settings

#: where a private redis-server listens when none answers on GENQ_REDIS_URL
PRIVATE_REDIS_PORT = 6390
#: where the demo's API and Flower listen
DEV_HOST = "127.0.0.1"
#: signals that stop `genq dev` as Ctrl-C does (a closing terminal, `timeout`, a process manager)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
LOG_DIR = Path(".genq/logs")
#: the demo's Flower login: this user and a random password made for each run
FLOWER_USER = "genq"
DEMO_JOBS = (
    {
        "kind": "text",
        "prompt": "Write a haiku about a spring marketing campaign",
        "params": {"max_tokens": 60},
    },
    {"kind": "image", "prompt": "a red fox in a spring meadow", "params": {"size": "256x256"}},
)


class StopRequested(BaseException):
    """SIGTERM or SIGHUP reached `genq dev`: stop like Ctrl-C (a BaseException, so no
    `except Exception` on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


def _stop_requested(signum: int, _frame) -> None:
    raise StopRequested(signum)


class Children:
    """Child processes started by the demo: each leads its own process group and gets SIGTERM
    if `genq dev` dies; on exit each is stopped (SIGTERM, then SIGKILL of its group)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        proc = spawn(argv, env=self.env, log=LOG_DIR / f"{name}.log")
        self.procs.append((name, proc))
        return proc

    def genq(self, name: str, *args: str) -> subprocess.Popen:
        return self.start(name, [sys.executable, "-m", "cli", *args])

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise ClientError(
                    f"{name} (pid {proc.pid}) {describe_exit(proc.returncode)}; stopping the "
                    f"others (log: {LOG_DIR / (name + '.log')})"
                )

    def describe(self) -> str:
        return ", ".join(f"{name} (pid {proc.pid})" for name, proc in self.procs)

    def stop(self) -> None:
        """Stop every child; further signals wait until that is done."""
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_IGN)
        stop_all([proc for _name, proc in reversed(self.procs)])


def check_ports(api_port: int, flower_port: int) -> None:
    """Refuse a taken port before anything starts: whatever holds it (often an earlier genq
    dev) would answer in place of ours, with keys and a Flower login that do not work there."""
    if api_port == flower_port:
        raise ClientError(f"--api-port and --flower-port are both {api_port}; pick two ports")
    for what, port, option in (
        ("API", api_port, "--api-port"),
        ("Flower", flower_port, "--flower-port"),
    ):
        if reason := bind_error(DEV_HOST, port):
            raise ClientError(
                f"port {port} ({what}) on {DEV_HOST}: {reason}; another genq may still be "
                f"running there: stop it, or pass {option}"
            )


def _redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        return bool(client.ping())
    except redis.RedisError:
        return False


def ensure_redis(settings: Settings, children: Children) -> str:
    """The Redis URL to use: the configured one, or a private redis-server we start."""
    if _redis_answers(settings.redis_url):
        console.print(f"redis: found at {settings.redis_url}")
        return settings.redis_url
    binary = shutil.which("redis-server")
    if binary is None:
        raise ClientError(
            f"no Redis answers at {settings.redis_url} and redis-server is not "
            "installed; install it (apt install redis-server) or set GENQ_REDIS_URL"
        )
    if reason := bind_error(DEV_HOST, PRIVATE_REDIS_PORT):
        raise ClientError(
            f"no Redis answers at {settings.redis_url} and port {PRIVATE_REDIS_PORT} for a "
            f"private one: {reason}; set GENQ_REDIS_URL"
        )
    url = f"redis://127.0.0.1:{PRIVATE_REDIS_PORT}/0"
    children.start(
        "redis",
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(PRIVATE_REDIS_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    )
    _wait_for(lambda: _redis_answers(url), "private redis-server", children)
    console.print(f"redis: none at {settings.redis_url}; started a private one at {url}")
    return url


def _wait_for(check, what: str, children: Children, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        children.check_alive()
        if time.monotonic() > deadline:
            raise ClientError(f"{what} did not come up within {timeout_s:.0f}s")
        time.sleep(0.2)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _flower_login(children: Children) -> str:
    """A fresh Flower login for this run, given to the flower child in its environment."""
    password = secrets.token_urlsafe(12)
    children.env["GENQ_FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{password}"
    return f"user {FLOWER_USER}, password {password}"


def _describe_provider(settings: Settings) -> str:
    if settings.effective_provider == "openai":
        return "provider: OpenAI (OPENAI_API_KEY is set) — real models, real charges"
    return (
        "provider: OFFLINE SIMULATOR (no OPENAI_API_KEY) — outputs are synthetic, "
        "token counts and costs are computed as for the real models"
    )


def run_demo(*, api_port: int, flower_port: int, once: bool) -> int:
    """0 when the demo ends (--once) or is stopped (Ctrl-C, SIGTERM, SIGHUP); 1 on a problem."""
    settings = get_settings()
    with ExitStack() as stack:
        env = {**os.environ, "GENQ_LOG_FORMAT": "console"}
        children = Children(env)
        for signum in STOP_SIGNALS:
            signal.signal(signum, _stop_requested)
        stack.callback(children.stop)
        try:
            check_ports(api_port, flower_port)
            return _demo(settings, children, api_port=api_port, flower_port=flower_port, once=once)
        except ClientError as exc:
            console.print(f"[red]genq dev: {exc}[/]")
            return 1
        except KeyboardInterrupt:
            console.print("stopping…")
            return 0
        except StopRequested as stop:
            console.print(f"stopping ({stop})…")
            return 0


def _demo(
    settings: Settings, children: Children, *, api_port: int, flower_port: int, once: bool
) -> int:
    console.print(_describe_provider(settings))
    upgrade(settings.database_url)
    console.print(
        f"database: {settings.database_url} at revision {current_revision(settings.database_url)}"
    )
    children.env["GENQ_REDIS_URL"] = ensure_redis(settings, children)
    api_url = f"http://127.0.0.1:{api_port}"
    flower_url = f"http://127.0.0.1:{flower_port}"
    children.genq("api", "api", "--port", str(api_port))
    children.genq("worker", "worker", "--concurrency", "4", "--hostname", "dev@%h")
    login = _flower_login(children)
    children.genq("flower", "flower", f"--port={flower_port}", "--address=127.0.0.1")
    _wait_for(lambda: _ready(f"{api_url}/readyz"), "the API", children)
    _wait_for(lambda: _ready(f"{flower_url}/healthcheck"), "Flower", children)
    console.print(f"processes: {children.describe()} (logs in {LOG_DIR}/)")

    with session_scope(get_engine(settings.database_url)) as session:
        _key, secret = create_key(session, name="genq-dev demo")
    # the results (key, jobs, usage, URLs) go to stdout; progress above went to stderr
    out.print(f"API key for this demo (shown once): [bold]{secret}[/]")
    client = GenqClient(api_url, secret)
    jobs = [client.submit(body) for body in DEMO_JOBS]
    for job in jobs:
        console.print(f"submitted {job['kind']} job {job['id']}")
    for job in jobs:
        finished = client.wait(job["id"], timeout_s=120, on_poll=lambda _j: children.check_alive())
        out.print(job_summary(finished, api_url=api_url))
    total = client.usage()["total"]
    out.print(f"usage for this key: {total['total_tokens']} tokens, ${money(total['cost_usd'])}")
    out.print(
        f"API docs: {api_url}/docs   Flower: {flower_url} ({login})   "
        f"try: curl -H 'Authorization: Bearer {secret}' {api_url}/v1/jobs"
    )
    if once:
        return 0
    console.print("running; press Ctrl-C (or send SIGTERM / SIGHUP) to stop")
    while True:
        children.check_alive()
        time.sleep(1)
