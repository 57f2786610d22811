"""``python -m benchmarks <suite> [options]``: run one benchmark suite.

Suites (``python -m benchmarks <suite> --help`` for each one's options):

* ``hotpath``  — the container over RPC v3 against a raw pyzmq echo (``benchmarks.hot_path``)
* ``e2e``      — HTTP end to end: Schooner, the asyncio floor, LitServe, Ray Serve (``wrk``)
* ``adaptive`` — highest open-loop rate within the SLO: adaptive vs fixed batch sizes
* ``startup``  — deploy call to first answer, and an idle container's memory, per framework
* ``frameworks`` — a small model per framework, container vs in-process
* ``oip``      — the Open Inference Protocol (REST JSON, binary, gRPC) vs Clipper's path, MLServer
* ``reliability`` — overload goodput and shedding, kill -9 and hung replicas, largest requests
* ``selection`` — the cost of a traffic split and a shadow per query; cache hits vs misses
* ``workers``  — the frontend as 1, 2, ... worker processes (``--frontend-workers``): req/s, batches
* ``ab``       — another revision (``--base REV``) and this checkout, interleaved: the container
  alone, or the whole server under ``wrk`` (``--path e2e``)

Every suite takes ``--smoke`` (short, no peers: what CI runs), ``--json FILE`` (raw
results), ``--repeats N`` (median of N runs), ``--server-cpu``/``--load-cpu``/``--no-pin``.
"""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "hotpath": "benchmarks.hot_path",
    "e2e": "benchmarks.e2e",
    "adaptive": "benchmarks.adaptive",
    "startup": "benchmarks.startup",
    "frameworks": "benchmarks.frameworks",
    "oip": "benchmarks.oip",
    "reliability": "benchmarks.reliability",
    "selection": "benchmarks.selection",
    "workers": "benchmarks.workers",
    "ab": "benchmarks.ab",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in SUITES:
        sys.stderr.write(__doc__ or "")
        if args and args[0] not in ("-h", "--help"):
            sys.stderr.write(f"\nunknown suite {args[0]!r}\n")
            return 2
        return 0 if args else 2
    module = importlib.import_module(SUITES[args[0]])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
