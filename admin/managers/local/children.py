"""One supervised child process: how to start it, and what happened to it so far.

A ``Child`` is driven by its supervisor's loop through ``tick(now)``: that reaps it when it
exited, schedules its restart by the ``RestartPolicy`` while it is still wanted, starts it
when the delay is over, and escalates SIGTERM to SIGKILL once a stop's grace period ends.
Children die with their supervisor (``PR_SET_PDEATHSIG`` on Linux), so a supervisor killed
with SIGKILL leaves no orphan serving stale state.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schooner.admin.managers.local.restart import RestartPolicy

__all__ = ["ChildSpec", "Child", "ChildState"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ChildState:
    """The states a child reports in ``status`` (plain strings on the control channel)."""

    RUNNING = "running"
    BACKOFF = "backoff"
    CONFIG_ERROR = "config-error"
    STOPPING = "stopping"
    STOPPED = "stopped"


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """Runs in the forked child before exec: ask Linux to SIGTERM it when the parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class ChildSpec:
    """What to run. ``environment`` is called at every start for the variables to add
    (a replica gets a fresh metrics port each time); ``ready_file`` is removed before it."""

    name: str
    kind: str
    argv: list[str]
    log_path: Path
    environment: Callable[[], dict[str, str]] = dict
    ready_file: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Child:
    """A supervised process and its history (restarts, last exit code, backoff)."""

    def __init__(self, spec: ChildSpec, policy: RestartPolicy) -> None:
        self.spec = spec
        self.policy = policy
        self.process: subprocess.Popen[bytes] | None = None
        self.wanted = True
        self.state = ChildState.STOPPED
        self.starts = 0
        self.failures = 0
        self.last_exit_code: int | None = None
        self.started_at: float | None = None
        self.next_start_at = 0.0
        self.stop_deadline: float | None = None
        self.current_env: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    def start(self, now: float) -> None:
        """Start the process now, its output appended to its log file."""
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.spec.ready_file is not None:
            self.spec.ready_file.unlink(missing_ok=True)
        self.current_env = dict(self.spec.environment())
        env = {**os.environ, **self.current_env, "PYTHONUNBUFFERED": "1"}
        with open(self.spec.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- schooner supervisor {stamp}: starting {self.name}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.spec.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        self.started_at = now
        self.state = ChildState.RUNNING
        logger.info("started %s (pid %d)", self.name, self.process.pid)

    def request_stop(self, now: float, grace_s: float) -> None:
        """Stop for good: SIGTERM now, SIGKILL after ``grace_s`` (done by ``tick``)."""
        self.wanted = False
        if self.process is None:
            self.state = ChildState.STOPPED
            return
        self.state = ChildState.STOPPING
        self.stop_deadline = now + grace_s
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL now and reap."""
        self.wanted = False
        if self.process is not None:
            self._signal(signal.SIGKILL)
            self.process.wait()
            self._exited(self.process.returncode, time.monotonic())

    def tick(self, now: float) -> None:
        """Advance this child's life by one supervisor loop iteration."""
        if self.process is not None:
            code = self.process.poll()
            if code is not None:
                self._exited(code, now)
            elif self.stop_deadline is not None and now >= self.stop_deadline:
                logger.warning("%s did not stop in time; killing it", self.name)
                self._signal(signal.SIGKILL)
                self.stop_deadline = None
        if self.process is None and self.wanted and now >= self.next_start_at:
            self.start(now)

    def info(self) -> dict[str, Any]:
        """This child as reported on the control channel."""
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "log_path": os.fspath(self.spec.log_path),
            "next_start_in_s": (
                round(max(0.0, self.next_start_at - time.monotonic()), 2)
                if self.process is None and self.wanted
                else None
            ),
            **self.spec.details,
            **(
                {"metrics_port": self._metrics_port(self.current_env["SCHOONER_METRICS_PORT"])}
                if "SCHOONER_METRICS_PORT" in self.current_env
                else {}
            ),
        }

    def _metrics_port(self, asked: str) -> int | None:
        """The replica's metrics port: the one asked for, or (asked 0) the one it reports in
        its ready file once it is ready; None before that."""
        if int(asked) or self.spec.ready_file is None:
            return int(asked)
        try:
            text = self.spec.ready_file.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key == "metrics_port" and value.isdigit():
                return int(value)
        return None

    def _exited(self, code: int, now: float) -> None:
        ran_for = now - (self.started_at if self.started_at is not None else now)
        self.process = None
        self.last_exit_code = code
        self.stop_deadline = None
        if not self.wanted:
            self.state = ChildState.STOPPED
            logger.info("%s stopped (exit code %d)", self.name, code)
            return
        self.failures = self.policy.failures_after(self.failures, ran_for)
        delay = self.policy.delay(self.failures, code)
        self.next_start_at = now + delay
        if self.policy.is_config_error(code):
            self.state = ChildState.CONFIG_ERROR
            logger.error(
                "%s exited with code %d (configuration or artifact error); retrying in %.1fs; "
                "see %s",
                self.name, code, delay, self.spec.log_path,
            )
        else:
            self.state = ChildState.BACKOFF
            logger.warning(
                "%s exited with code %d after %.1fs; restarting in %.1fs",
                self.name, code, ran_for, delay,
            )

    def _signal(self, sig: int) -> None:
        if self.process is not None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass
