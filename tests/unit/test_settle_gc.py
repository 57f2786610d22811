"""runtime.memory.settle_gc: the start-up's garbage is collected, what is alive when serving
starts leaves the collector's sight, and young objects are collected less often; measured
in a fresh process."""

import json
import subprocess
import sys

from schooner.runtime import memory

_SCRIPT = """
import gc, json, weakref
import numpy  # a framework's worth of long-lived objects
from schooner.runtime import memory
class Node:
    pass
garbage = Node()
garbage.cycle = garbage  # a loader's garbage: a cycle nothing refers to any more
collected = weakref.ref(garbage)
del garbage
memory.settle_gc()
frozen = gc.get_freeze_count()
gc.collect()
young = []
collections = gc.get_stats()[0]["collections"]
for _ in range(5000):  # 5,000 container objects: under the new threshold, over the old
    young.append([])
print(json.dumps({"frozen": frozen, "threshold": gc.get_threshold()[0],
                  "startup_garbage_freed": collected() is None,
                  "gen0_runs": gc.get_stats()[0]["collections"] - collections}))
"""


def test_settle_gc_freezes_what_is_alive_and_raises_the_first_threshold():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    found = json.loads(out.stdout)
    assert found["frozen"] > 10_000  # the modules, numpy's included
    assert found["threshold"] == memory.GC_THRESHOLD
    assert found["startup_garbage_freed"]  # collected before the freeze, never frozen
    assert found["gen0_runs"] == 0  # none ran for 5,000 new lists (700 would have run 7 times)
