"""Names shared by the API (which publishes) and the workers (which consume): the queue contract.

The API publishes by task name, so it never imports worker code. A message carries only a job id.
"""

from __future__ import annotations

TEXT_QUEUE = "text"
IMAGE_QUEUE = "images"
#: task names say what the task does; they are what Flower shows
TASK_BY_KIND = {"text": "genq.generate_text", "image": "genq.generate_image"}
QUEUE_BY_KIND = {"text": TEXT_QUEUE, "image": IMAGE_QUEUE}
#: Celery message header carrying the API's request id to the worker (a header, not an argument)
REQUEST_ID_HEADER = "genq_request_id"
