"""Names shared by the API (which publishes) and the workers (which consume): the queue contract.

The API publishes by task name, so it never imports worker code. A message carries only a job id.
Each kind has two queues: the interactive one and its `.batch` lane (jobs of a `/v1/batches`
batch). A worker consuming both always takes from the interactive queues first
(`models/redis_transport.py` `InteractiveFirst`), so a large batch never delays a single submit
by more than one job's run per worker thread.
"""

from __future__ import annotations

TEXT_QUEUE = "text"
IMAGE_QUEUE = "images"
#: the suffix of a kind's batch lane: `text.batch`, `images.batch`
BATCH_SUFFIX = ".batch"
#: task names say what the task does; they are what Flower shows
TASK_BY_KIND = {"text": "genq.generate_text", "image": "genq.generate_image"}
QUEUE_BY_KIND = {"text": TEXT_QUEUE, "image": IMAGE_QUEUE}
#: builds a finished batch's output and error files (worker/batches.py); the API queues it too
FINALIZE_TASK = "genq.finalize_batch"
#: webhook deliveries: their own queue, so a slow receiver never waits in front of a job;
#: the message carries only the delivery id
WEBHOOK_QUEUE = "webhooks"
WEBHOOK_TASK = "genq.deliver_webhook"
BATCH_QUEUE_BY_KIND = {kind: queue + BATCH_SUFFIX for kind, queue in QUEUE_BY_KIND.items()}
INTERACTIVE_QUEUES = (TEXT_QUEUE, IMAGE_QUEUE)
BATCH_QUEUES = tuple(BATCH_QUEUE_BY_KIND.values())
#: every queue a plain `genq worker` consumes, interactive ones first
#: (webhook deliveries are quick hand-offs: they come between the interactive queues and the
#: batch lanes)
ALL_QUEUES = (*INTERACTIVE_QUEUES, WEBHOOK_QUEUE, *BATCH_QUEUES)
#: Celery message header carrying the API's request id to the worker (a header, not an argument)
REQUEST_ID_HEADER = "genq_request_id"


def queue_for(kind: str, *, batch: bool = False) -> str:
    """The queue a job of this kind goes to: its batch lane when it belongs to a batch."""
    return (BATCH_QUEUE_BY_KIND if batch else QUEUE_BY_KIND)[kind]


def is_batch_queue(name: str) -> bool:
    return name.endswith(BATCH_SUFFIX)
