"""runtime.memory: with glibc, freed large buffers are kept for the next batch (no page
faults the second time), and given back on request; measured in a fresh process each."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from schooner.runtime import memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")

# Eight 600 KB inputs in flight, freed together, eight times: the minor page faults of the
# last seven rounds, with and without keep_freed_memory, and after a release.
_SCRIPT = """
import json, resource, sys
from schooner.runtime import memory
keep = int(sys.argv[1])
took = memory.keep_freed_memory(keep)
def rounds(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        held = [bytearray(600 * 1024) for _ in range(8)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
rounds(1)
kept = rounds(7)
memory.release_freed_memory()
after_release = rounds(1)
print(json.dumps({"took": took, "faults": kept, "after_release": after_release}))
"""


def _run(keep: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(keep)], capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    return json.loads(out.stdout)


def test_freed_large_buffers_are_reused_without_page_faults() -> None:
    default, kept = _run(0), _run(64 << 20)
    assert default["took"] is False and kept["took"] is True
    pages_per_round = 8 * 600 * 1024 // 4096
    # glibc's defaults: the 4.8 MB freed at once is trimmed and faulted in again each round
    assert default["faults"] >= 7 * pages_per_round // 2
    # kept: the same memory serves every round
    assert kept["faults"] < pages_per_round // 4
    # released: the next round faults it in again
    assert kept["after_release"] >= pages_per_round // 2


def test_zero_leaves_the_defaults_and_release_is_harmless() -> None:
    assert memory.keep_freed_memory(0) is False
    memory.release_freed_memory()
