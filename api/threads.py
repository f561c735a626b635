"""The submit routes' hop to a worker thread: `loop.run_in_executor` on one pool of threads.

A synchronous route runs through Starlette's `run_in_threadpool`, that is anyio's
`to_thread.run_sync`: an extra pass of the event loop (its checkpoint), the capacity limiter, a
shielded cancel scope and async-library lookups: 0.07 to 0.11 M instructions of a submit's ~3.9 M
(docs/performance.md, "Session 5"). The submit routes are async and hop here instead: the same
blocking work (the INSERT, the LPUSH) in a worker thread, with a copy of the request's context (its
request id reaches the log lines and the job's message), at most `SUBMIT_THREADS` at once.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

#: submits in threads at once per API process: anyio's default thread limit, which they had
SUBMIT_THREADS = 40

_P = ParamSpec("_P")
_T = TypeVar("_T")
_POOL = ThreadPoolExecutor(max_workers=SUBMIT_THREADS, thread_name_prefix="genq-submit")


async def in_thread(func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`func(*args, **kwargs)` in a submit thread, in a copy of the caller's context."""
    context = contextvars.copy_context()
    call = (lambda: func(*args, **kwargs)) if kwargs else (lambda: func(*args))
    return await asyncio.get_running_loop().run_in_executor(_POOL, context.run, call)
