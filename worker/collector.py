"""The cyclic garbage collector, tuned for a worker that holds many calls at once (issue 17).

Python collects its youngest generation every 700 net allocations of container objects, and
every collection holds the GIL. A worker with 1,000 calls in flight keeps ~1 M live objects, so
its collections were ~10% of its CPU (perf) and a full one took 0.5-0.7 s, during which every
thread returning from a socket waits for the GIL and wakes every 5 ms to ask for it. Collecting
every `threshold` allocations instead, with the objects alive at start-up (modules, schemas, the
catalogue: they live as long as the process) frozen out of every later collection, leaves a few
short collections per wave. Reference counting still frees everything that is not in a cycle at
once; what waits longer is cyclic garbage, at most about `threshold` objects.
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger("genq.worker")

#: the older generations' thresholds kept with a raised first one (Python's are 10 and 10)
OLDER = (20, 10)


def tune(threshold: int) -> int:
    """Collect once, freeze what is alive and raise the first threshold; 0 changes nothing.
    Returns how many objects were frozen (0 when untouched)."""
    if threshold <= 0:
        return 0
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, *OLDER)
    frozen = gc.get_freeze_count()
    log.info("collector.tuned", threshold=threshold, frozen=frozen)
    return frozen
