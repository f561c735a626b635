"""The one name `genq api --workers N` and the API processes agree on for summed metrics.

A module of its own, importing nothing: the supervisor sets it before it starts the API
processes, and importing the API's routes for it would cost the supervisor ~2 s of CPU (the
whole app) before the first process can start.
"""

#: set by `genq api --workers N`: each process writes its metrics to files in this directory
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
