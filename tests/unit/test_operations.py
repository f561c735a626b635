"""Operations pieces without services: Flower's login, worker options, request ids, log hygiene."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import pytest
import structlog
from pydantic import ValidationError

from api.request_id import accept_or_make
from cli.ops import OpsError, flower_argv, pool_of
from models.logging import configure_logging
from models.settings import Settings, describe_error
from worker.observe import log_context, message_headers, request_id_of


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


# -- Flower's login ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "args", "unauthenticated", "expected"),
    [
        ("admin:s3cret", ["--port=5555"], False, ["--basic-auth=admin:s3cret", "--port=5555"]),
        ("admin:s3cret", ["--port=5555"], True, ["--basic-auth=admin:s3cret", "--port=5555"]),
        (None, ["--basic-auth=ops:pw"], False, ["--basic-auth=ops:pw"]),
        ("admin:s3cret", ["--basic_auth=ops:pw"], False, ["--basic_auth=ops:pw"]),
        (None, ["--auth=.*@example\\.com"], False, ["--auth=.*@example\\.com"]),
        (None, ["--port=5555"], True, ["--port=5555"]),
    ],
)
def test_flower_gets_a_login_or_an_explicit_opt_out(auth, args, unauthenticated, expected):
    configured = settings(flower_basic_auth=auth)
    assert flower_argv(configured, args, unauthenticated=unauthenticated) == expected


def test_flower_without_any_login_is_refused():
    with pytest.raises(OpsError, match="GENQ_FLOWER_BASIC_AUTH"):
        flower_argv(settings(), ["--port=5555"], unauthenticated=False)


@pytest.mark.parametrize("value", ["admin", ":pw", "admin:", "a:b,c:d", ""])
def test_flower_basic_auth_must_be_user_colon_password(value):
    with pytest.raises(ValidationError) as caught:
        settings(flower_basic_auth=value)
    line = describe_error(caught.value)
    assert line.startswith("invalid setting GENQ_FLOWER_BASIC_AUTH")
    assert not value or value not in line


def test_flower_password_is_secret_in_reprs():
    configured = settings(flower_basic_auth="admin:hunter22")
    assert "hunter22" not in repr(configured) and "hunter22" not in str(configured)


# -- worker options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "pool"),
    [
        (["--concurrency", "4"], None),
        (["-P", "prefork"], "prefork"),
        (["-Pthreads"], "threads"),
        (["--pool", "gevent"], "gevent"),
        (["--pool=solo", "-c", "1"], "solo"),
    ],
)
def test_pool_is_read_from_celery_options(args, pool):
    assert pool_of(args) == pool


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["--autoscale", "32,4"], True),
        (["--autoscale=32,4", "-P", "threads"], True),
        (["--autoscale", "8,2", "-P", "prefork"], False),
        (["--concurrency", "32"], False),
    ],
)
def test_autoscale_is_refused_on_the_threads_pool(args, refused):
    from cli.ops import check_autoscale

    if refused:
        with pytest.raises(OpsError, match="--concurrency"):
            check_autoscale(args)
    else:
        check_autoscale(args)


def test_metrics_port_refuses_a_pool_that_forks():
    from cli.ops import start_worker_metrics

    with pytest.raises(OpsError, match="threads pool"):
        start_worker_metrics(settings(), 9999, ["-P", "prefork"])
    assert start_worker_metrics(settings(), 0, []) is None
    assert start_worker_metrics(settings(worker_metrics_port=0), None, []) is None


# -- request ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("incoming", ["abc", "req-2024.11:x", "0f" * 32, "a/b+c=d_e"])
def test_a_sane_incoming_request_id_is_kept(incoming):
    assert accept_or_make(incoming) == incoming


@pytest.mark.parametrize("incoming", [None, "", "x" * 129, "has space", "new\nline", "-lead", "é"])
def test_a_missing_or_odd_request_id_is_replaced(incoming):
    made = accept_or_make(incoming)
    assert made != incoming and len(made) == 32 and made.isalnum()


def test_worker_reads_the_request_id_from_the_message_header():
    as_attribute = SimpleNamespace(id="t1", genq_request_id="req-1", headers=None)
    in_headers = SimpleNamespace(id="t2", headers={"genq_request_id": "req-2"})
    without = SimpleNamespace(id="t3", headers=None)
    assert request_id_of(as_attribute) == "req-1" and request_id_of(in_headers) == "req-2"
    assert log_context(without, "job9") == {"job_id": "job9", "task_id": "t3"}
    assert log_context(in_headers, "job9")["request_id"] == "req-2"


def test_a_message_the_worker_publishes_keeps_the_request_id():
    assert message_headers() is None
    with structlog.contextvars.bound_contextvars(request_id="req-3", job_id="j"):
        assert message_headers() == {"genq_request_id": "req-3"}


# -- log hygiene ------------------------------------------------------------------------------


@pytest.fixture
def log_lines(capsys):
    """Configure genq's JSON logging and return a reader of the lines written to stderr."""

    def configure(**values) -> None:
        configure_logging(settings(log_format="json", **values))

    def read() -> list[dict]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]

    yield configure, read
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


@pytest.mark.parametrize("allowed", [False, True])
def test_prompt_fields_are_withheld_unless_allowed(log_lines, allowed):
    configure, read = log_lines
    configure(log_prompts=allowed)
    structlog.get_logger("t").info("job.prompt", prompt="a red fox", job_id="j1")
    [line] = read()
    assert line["job_id"] == "j1"
    assert (line["prompt"] == "a red fox") is allowed
    assert ("a red fox" in json.dumps(line)) is allowed


def test_context_and_secret_masking_reach_stdlib_lines_too(log_lines):
    configure, read = log_lines
    configure()
    with structlog.contextvars.bound_contextvars(request_id="req-7"):
        logging.getLogger("celery.worker").warning("key sk-abcdefghijkl leaked?")
    [line] = read()
    assert line["request_id"] == "req-7" and "sk-abcdefghijkl" not in line["event"]


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING"])
def test_genq_lines_follow_the_level_in_one_stream_with_stdlib_lines(log_lines, level):
    configure, read = log_lines
    configure(log_level=level)
    log = structlog.get_logger("genq.t")
    with structlog.contextvars.bound_contextvars(request_id="req-9"):
        log.debug("t.debug", job_id="j1")
        logging.getLogger("celery.t").info("stdlib info")
        log.info("t.info", job_id="j1", secret="genq_abcdefghijklmnop")
        log.warning("t.warning", job_id="j1")
    lines = read()
    shown = {
        "DEBUG": ["t.debug", "stdlib info", "t.info", "t.warning"],
        "INFO": ["stdlib info", "t.info", "t.warning"],
        "WARNING": ["t.warning"],
    }
    assert [line["event"] for line in lines] == shown[level]
    for line in lines:
        assert line["request_id"] == "req-9" and line["timestamp"].endswith("Z")
        assert line["level"] == ("info" if line["event"] == "stdlib info" else line["event"][2:])
    assert all("genq_abcdefghijklmnop" not in json.dumps(line) for line in lines)


def test_a_logger_used_before_a_new_configuration_follows_it(log_lines):
    configure, read = log_lines
    log = structlog.get_logger("genq.t")
    configure(log_level="WARNING")
    log.info("t.hidden")
    log.warning("t.first")
    configure(log_level="DEBUG")  # a new handler and level: the cached logger follows both
    log.debug("t.second")
    assert [line["event"] for line in read()] == ["t.first", "t.second"]


def test_a_line_that_cannot_be_written_never_fails_the_caller(log_lines):
    configure, _read = log_lines
    configure()
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    stream.close()  # a log pipe that went away
    structlog.get_logger("genq.t").info("t.lost", job_id="j1")  # must not raise
    logging.getLogger("celery.t").warning("stdlib lost")  # the stdlib handler's own rule


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_the_sdk_http_clients_request_lines_show_only_at_debug(log_lines, level, shown):
    configure, read = log_lines
    configure(log_level=level)
    logging.getLogger("httpx2").info('HTTP Request: POST http://127.0.0.1/v1 "HTTP/1.1 200 OK"')
    logging.getLogger("httpx2").warning("connection pool full")
    events = [line["event"] for line in read()]
    assert any(e.startswith("HTTP Request") for e in events) is shown
    assert "connection pool full" in events


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_celerys_per_task_lines_show_only_at_debug_and_its_errors_always(log_lines, level, shown):
    from celery.app import trace
    from celery.worker import strategy

    configure, read = log_lines
    configure(log_level=level)
    # what Celery checks once when its worker starts, before it writes either line
    assert trace.logger.isEnabledFor(logging.INFO) is shown
    assert strategy.logger.isEnabledFor(logging.INFO) is shown
    strategy.logger.info("Task genq.generate_text[t1] received")
    trace.logger.info("Task genq.generate_text[t1] succeeded in 0.1s: None")
    trace.logger.error("Task genq.generate_text[t2] raised unexpected: KeyError()")
    events = [line["event"] for line in read()]
    assert any(e.endswith("received") for e in events) is shown
    assert any("succeeded in" in e for e in events) is shown
    assert any("raised unexpected" in e for e in events)


@pytest.mark.parametrize("events", [True, False])
def test_task_events_follow_the_setting(events):
    from worker.celery_app import make_celery

    conf = make_celery(settings(task_events=events)).conf
    assert conf.worker_send_task_events is events and conf.task_send_sent_event is events
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1  # the rest stays
