"""The naive baseline: what people write first to queue model calls with Celery.

Celery with every default (prefork pool, concurrency = CPU cores, the broker from
`CELERY_BROKER_URL`), a module-level `OpenAI()` client (reads `OPENAI_API_KEY` / `OPENAI_BASE_URL`),
and one blocking SDK call per task. Run by the benchmark as
`celery -A bench.naive_app worker`. The only addition is one Redis RPUSH per task recording when
the call started and ended, so its throughput is measured exactly like genq's (first start to last
finish).
"""

from __future__ import annotations

import time
from functools import lru_cache

import redis
from celery import Celery
from openai import OpenAI

from bench.config import NAIVE_TASK, NAIVE_TIMES_KEY

app = Celery("naive")
client = OpenAI()


@lru_cache
def _timings() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


@app.task(name=NAIVE_TASK)
def generate(prompt: str, max_tokens: int, model: str) -> str:
    """One blocking chat completion, as a naive worker would do it."""
    started = time.time()
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens
    )
    _timings().rpush(NAIVE_TIMES_KEY, f"{started} {time.time()}")
    return reply.choices[0].message.content or ""
