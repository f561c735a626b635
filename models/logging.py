"""structlog set-up shared by API, workers and CLI: JSON lines, or console text in `genq dev`."""

from __future__ import annotations

import logging
import re

import structlog

from models.settings import Settings

#: anything that looks like an API secret is masked before a line is written
SECRET_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6,}|genq_[A-Za-z0-9_\-]{10,})")


def redact(text: str) -> str:
    """Mask OpenAI and genq secrets inside free text."""
    return SECRET_PATTERN.sub(lambda m: m.group(0)[:5] + "***", text)


#: libraries that log every HTTP request at INFO (the OpenAI SDK's HTTP client), and Celery's
#: per-task INFO lines ("Task … received", "Task … succeeded in …s: …"), which repeat genq's own
#: `job.*` lines; their warnings and errors (a task that raised) still show
CHATTY_LOGGERS = (
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "celery.worker.strategy",
    "celery.app.trace",
)

#: event fields that carry prompt text: written only when GENQ_LOG_PROMPTS=true
PROMPT_FIELDS = frozenset({"prompt", "messages"})


def _withhold_prompts(_logger, _name, event_dict: dict) -> dict:
    for key in PROMPT_FIELDS & event_dict.keys():
        event_dict[key] = "[withheld: set GENQ_LOG_PROMPTS=true to log prompts]"
    return event_dict


#: what every secret SECRET_PATTERN masks starts with: a value holding neither is left as it is
_SECRET_PREFIXES = ("sk-", "genq_")


def _redact_event(_logger, _name, event_dict: dict) -> dict:
    for key, value in event_dict.items():
        if isinstance(value, str) and any(prefix in value for prefix in _SECRET_PREFIXES):
            event_dict[key] = redact(value)
    return event_dict


class _HandlerWriter:
    """Where genq's own lines go: rendered by structlog, written to the current root handler's
    stream under that handler's lock (one stream and one lock with the stdlib lines). One writer
    per process, so a logger structlog cached before a later `configure_logging` follows it."""

    handler: logging.StreamHandler | None = None
    #: the configured level, read by `_at_level` on every line (not frozen into a cached logger)
    level: int = logging.INFO

    def msg(self, message: str) -> None:
        handler = self.handler
        if handler is None:
            return
        try:
            with handler.lock:
                handler.stream.write(message + handler.terminator)
                handler.stream.flush()
        except Exception:  # as a stdlib handler does: a failed write never fails the caller
            pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


_WRITER = _HandlerWriter()
#: structlog's method names and their stdlib levels (a name not here is never dropped)
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _at_level(_logger, method: str, event_dict: dict) -> dict:
    """Drop a line below the configured level before any other processor runs."""
    if _METHOD_LEVELS.get(method, logging.CRITICAL) < _WRITER.level:
        raise structlog.DropEvent
    return event_dict


def configure_logging(settings: Settings) -> None:
    """Route stdlib and structlog output through one renderer at the configured level.

    genq's own lines are filtered by level before any other processor runs and rendered by structlog
    itself, not handed to stdlib logging as records (a LogRecord, the handler and
    ProcessorFormatter per line cost a worker ~0.1 ms of CPU per line, two lines a job); the
    stdlib's lines (Celery, the SDK's HTTP client) still go through ProcessorFormatter with the
    same processors, so both kinds carry the same fields, redaction and withholding.
    """
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if settings.log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
    ]
    shared += [] if settings.log_prompts else [_withhold_prompts]
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    _WRITER.handler, _WRITER.level = handler, root.level
    structlog.configure(
        processors=[_at_level, *shared, renderer],
        logger_factory=lambda *_args: _WRITER,
        cache_logger_on_first_use=True,
    )
    # One INFO line per HTTP call from the SDK's client, and Celery's two per task, repeat genq's
    # own job and attempt lines (which carry job, model and outcome); they cost a busy worker CPU.
    # GENQ_LOG_LEVEL=DEBUG shows them. Celery reads these levels once, when its worker starts.
    quiet = root.level if root.level <= logging.DEBUG else max(root.level, logging.WARNING)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
