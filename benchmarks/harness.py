"""What every benchmark suite shares: where processes run, what the machine is, how a
result is summarised and printed.

* **Placement.** By default the server side (every process of the system under test) is
  pinned to cpu 0 with ``taskset`` and the load (driver, ``wrk``, the open-loop generator)
  to cpu 1; ``--server-cpu``, ``--load-cpu`` and ``--no-pin`` change that, and every table
  says where things ran. Child processes inherit the affinity, so a server that forks
  workers (LitServe, Ray) stays on its core.
* **The machine line**: cores, CPU model, load average and the versions that matter.
* **Medians**: each cell is the median of ``--repeats`` runs; ratios are taken against a
  baseline measured in the same run (never against numbers from another day).
* **Server CPU time**: utime + stime of a process tree, read from ``/proc`` before and
  after a run.
* ``--json FILE`` writes the raw results; ``--smoke`` makes a run short (CI).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Placement", "add_common_args", "placement_from", "machine", "versions", "pinned",
    "repo_root", "median", "tree_cpu_seconds", "tree_pids", "rss_bytes", "free_port",
    "wait_for_http", "post_json", "markdown_table", "write_json", "header", "stop", "cpu_model",
    "python_has",
]  # fmt: skip

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """Which cpu the server side and the load side run on (None: not pinned)."""

    server_cpu: int | None
    load_cpu: int | None

    def describe(self) -> str:
        if self.server_cpu is None:
            return "not pinned"
        return f"server pinned to cpu {self.server_cpu}, load to cpu {self.load_cpu} (taskset)"

    def pin_self(self) -> None:
        """Pin this (the driving) process to the load cpu."""
        if self.load_cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {self.load_cpu})


def add_common_args(parser: argparse.ArgumentParser, *, repeats: int = 3) -> None:
    parser.add_argument("--smoke", action="store_true", help="a short run (CI): no peers")
    parser.add_argument("--repeats", type=int, default=repeats, help="runs per cell (median)")
    parser.add_argument("--server-cpu", type=int, default=0, help="cpu of the server side")
    parser.add_argument("--load-cpu", "--driver-cpu", dest="load_cpu", type=int, default=1,
                        help="cpu of the load generator / driver")  # fmt: skip
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything")
    parser.add_argument("--json", help="write the raw results to this file")


def placement_from(args: argparse.Namespace) -> Placement:
    """The placement the arguments ask for; unpinned where pinning is impossible."""
    can_pin = (
        not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    )
    return Placement(args.server_cpu, args.load_cpu) if can_pin else Placement(None, None)


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """``cmd`` run through ``taskset -c cpu`` (unchanged when ``cpu`` is None)."""
    if cpu is None or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


def repo_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


# --------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions(*names: str) -> str:
    """``name version`` for each importable distribution among ``names``."""
    from importlib import metadata

    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def machine(*extra_packages: str) -> str:
    """One line: cores, CPU model, load average, Python and library versions."""
    import zmq

    load = ""
    if hasattr(os, "getloadavg"):
        one, five, fifteen = os.getloadavg()
        load = f"load average {one:.2f} {five:.2f} {fifteen:.2f}; "
    libs = versions("numpy", *extra_packages)
    return (f"{os.cpu_count()} cores, {cpu_model()}; {load}Python {platform.python_version()}, "
            f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}"
            + (f", {libs}" if libs else ""))  # fmt: skip


def header(title: str, placement: Placement, detail: str, *packages: str) -> str:
    """The lines printed above every table."""
    return (f"# {title}\n# {machine(*packages)}\n# {detail}; {placement.describe()}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip


# --------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    return raw[raw.rfind(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """User + system CPU seconds of the live processes in the trees under ``roots``."""
    total = 0
    for root in roots:
        for pid in tree_pids(root):
            fields = _stat_fields(pid)
            if fields is not None:
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stop(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; the process is reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post_json(url: str, body: object, timeout: float = 10.0, token: str | None = None) -> Any:
    """POST JSON; ``token``: a management API's token, sent as a bearer credential."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for_http(url: str, timeout_s: float, proc: subprocess.Popen[Any] | None = None,
                  body: object = None) -> Any:  # fmt: skip
    """Poll ``url`` (GET, or POST ``body``) until it answers 200; return the JSON answer."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {proc.returncode}")
        try:
            if body is None:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return json.loads(response.read() or b"null")
            return post_json(url, body, timeout=5)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s ({last})")


# --------------------------------------------------------------------------- results


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                   align: str = "") -> str:  # fmt: skip
    """A Markdown table; ``align`` has one letter per column, ``r`` right-aligns it."""
    spec = [("---:" if i < len(align) and align[i] == "r" else "---") for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(spec) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: object) -> None:
    if not path:
        return

    def plain(obj: object) -> object:
        if is_dataclass(obj) and not isinstance(obj, type):
            return asdict(obj)
        raise TypeError(f"cannot write {type(obj).__name__} as JSON")

    Path(path).write_text(json.dumps(payload, indent=2, default=plain))


def python_has(python: str, module: str) -> bool:
    """Whether ``python`` can import ``module``."""
    if not Path(python).exists() and shutil.which(python) is None:
        return False
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0
