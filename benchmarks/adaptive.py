"""Adaptive batching: the highest rate Schooner sustains within the app's latency SLO,
with adaptive batch sizes, with a fixed batch size of 1 and with a fixed size of 32.

Load is open-loop (``benchmarks.loadgen``: requests leave on a fixed timetable, latency is
measured from each request's scheduled time, so a slow server cannot slow the load down):
the rate rises geometrically (x ``--step``) until the p99 latency exceeds the SLO (a
default answer, an error or an unanswered request counts as a miss) at two runs in a row
(one stall of a shared machine must not end the search), then ``--refine`` bisection steps
narrow the boundary. A row reports the highest rate that passed and what
was measured there. Models (``benchmarks.models``): the PyTorch ``mlp`` and ``sublinear``
(the MLP behind a fixed 2 ms per call, whose cost grows sub-linearly with the batch).

Schooner (frontend + one container) runs on the server cpu with the app's SLO set to
``--slo-ms``; the model is deployed with ``batch_size`` -1 (adaptive), 1 or 32 (the
container's max batch size follows, as the local manager sets it).

    python -m benchmarks adaptive                     # both models (about 6 minutes)
    python -m benchmarks adaptive --models mlp --slo-ms 20
    python -m benchmarks adaptive --smoke             # a few short steps (CI)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import models
from benchmarks.harness import (
    Placement,
    add_common_args,
    header,
    markdown_table,
    pinned,
    placement_from,
    repo_root,
    write_json,
)  # fmt: skip
from benchmarks.systems import Running, start_schooner

__all__ = ["main"]

POLICIES = {"adaptive": -1, "batch 1": 1, "batch 32": 32}


@dataclass
class Step:
    rate: float
    throughput: float
    p50_ms: float | None
    p99_ms: float | None
    misses: int
    passed: bool


@dataclass
class Row:
    model: str
    policy: str
    slo_ms: float
    best_rate: float
    throughput: float
    p50_ms: float | None
    p99_ms: float | None
    steps: list[Step] = field(default_factory=list)


def run_step(running: Running, rate: float, seconds: float, warmup: float, slo_ms: float,
             placement: Placement, body: Path, connections: int) -> Step:  # fmt: skip
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "open", running.url, str(body),
           "--rate", f"{rate:.1f}", "--seconds", str(seconds), "--warmup", str(warmup),
           "--connections", str(connections), "--grace", str(max(1.0, 4 * slo_ms / 1000))]  # fmt: skip
    out = subprocess.run(pinned(cmd, placement.load_cpu), capture_output=True, text=True,
                         cwd=repo_root(), timeout=seconds + warmup + 60)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed:\n{out.stderr[-3000:]}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    misses = raw["errors"] + raw["defaulted"] + raw["unanswered"]
    p99 = raw["p99_us"]
    passed = p99 is not None and p99 / 1e3 <= slo_ms
    to_ms = lambda us: None if us is None else us / 1e3  # noqa: E731
    return Step(rate, raw["throughput_per_s"], to_ms(raw["p50_us"]), to_ms(p99), misses, passed)


def search(running: Running, start: float, step: float, refine: int, max_rate: float,
           seconds: float, warmup: float, slo_ms: float, placement: Placement, body: Path,
           connections: int) -> list[Step]:  # fmt: skip
    """Rates rising by ``step`` until one fails twice in a row, then ``refine`` bisections."""
    steps: list[Step] = []
    rate = start
    good: Step | None = None
    bad: Step | None = None
    while rate <= max_rate:
        s = run_step(running, rate, seconds, warmup, slo_ms, placement, body, connections)
        steps.append(s)
        if not s.passed:  # confirm: one stall of the machine must not end the search
            s = run_step(running, rate, seconds, warmup, slo_ms, placement, body, connections)
            steps.append(s)
        if not s.passed:
            bad = s
            break
        good = s
        rate *= step
    lo = good.rate if good else 0.0
    hi = bad.rate if bad else None
    for _ in range(refine if hi is not None and lo > 0 else 0):
        mid = (lo + hi) / 2  # type: ignore[operator]
        s = run_step(running, mid, seconds, warmup, slo_ms, placement, body, connections)
        steps.append(s)
        if s.passed:
            lo = mid
        else:
            hi = mid
    return steps


def table(rows: list[Row]) -> str:
    base = {r.model: r for r in rows if r.policy == "batch 1"}
    out = []
    for r in rows:
        b = base.get(r.model)
        ratio = f"{r.throughput / b.throughput:.1f}x" if b and b.throughput and r is not b else ""
        fmt = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
        out.append([r.model, r.policy, f"{r.slo_ms:g}", f"{r.best_rate:,.0f}",
                    f"{r.throughput:,.0f}", ratio, fmt(r.p50_ms), fmt(r.p99_ms), len(r.steps)])  # fmt: skip
    return markdown_table(["model", "batching", "SLO ms", "highest rate within SLO /s",
                           "answers/s there", "vs batch 1", "p50 ms", "p99 ms", "steps"],
                          out, "llrrrrrrr")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks adaptive",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    add_common_args(parser, repeats=1)
    parser.add_argument("--models", default="mlp,sublinear")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--slo-ms", type=float, default=20.0, help="the app's latency SLO")
    parser.add_argument("--start-rate", type=float, default=200.0, help="first rate, req/s")
    parser.add_argument("--step", type=float, default=1.3, help="rate multiplier per step")
    parser.add_argument("--refine", type=int, default=2, help="bisection steps at the end")
    parser.add_argument("--max-rate", type=float, default=100_000.0)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured per step")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured lead-in per step")
    parser.add_argument("--connections", type=int, default=128, help="load generator's pool")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.warmup, args.refine, args.max_rate = 0.3, 0.1, 0, args.start_rate * 2
    placement = placement_from(args)
    placement.pin_self()
    policies = args.policies.split(",")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="schooner-adaptive-") as tmp_name:
        tmp = Path(tmp_name)
        body = tmp / "body.json"
        body.write_bytes(models.body())
        from schooner.frameworks import closure

        for model in args.models.split(","):
            artifact = closure.save(models.build(model), tmp / f"{model}-artifact")
            for policy in policies:
                running = start_schooner(model, artifact, tmp, placement.server_cpu,
                                         batch_size=POLICIES[policy],
                                         slo_micros=int(args.slo_ms * 1000))  # fmt: skip
                try:
                    steps = search(running, args.start_rate, args.step, args.refine,
                                   args.max_rate, args.seconds, args.warmup, args.slo_ms,
                                   placement, body, args.connections)  # fmt: skip
                finally:
                    running.stop()
                passed = [s for s in steps if s.passed]
                best = max(passed, key=lambda s: s.rate) if passed else None
                rows.append(Row(model, policy, args.slo_ms, best.rate if best else 0.0,
                                best.throughput if best else 0.0, best.p50_ms if best else None,
                                best.p99_ms if best else None, steps))  # fmt: skip
    detail = (f"open-loop load (benchmarks.loadgen), {args.seconds:g} s per step after "
              f"{args.warmup:g} s, rates x{args.step:g} then {args.refine} bisections; "
              f"p99 within the app's SLO of {args.slo_ms:g} ms")  # fmt: skip
    print(header("adaptive batching: highest throughput within the SLO", placement, detail,
                 "torch", "uvloop"))  # fmt: skip
    print(table(rows))
    for model in dict.fromkeys(r.model for r in rows):
        got = {r.policy: r for r in rows if r.model == model}
        if "adaptive" in got and "batch 1" in got and got["batch 1"].throughput:
            ratio = got["adaptive"].throughput / got["batch 1"].throughput
            print(f"- {model}: adaptive {ratio:.1f}x batch 1 within the same SLO "
                  f"(target >= 5: {'met' if ratio >= 5 else 'MISSED'})")  # fmt: skip
    write_json(args.json, {"suite": "adaptive", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
