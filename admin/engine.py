"""The Docker engine, through the ``docker`` command: the one place its failures become errors.

Schooner drives the engine with the Docker CLI, not the Docker SDK for Python: the CLI is
what a Docker user already has (no extra dependency, no version skew between an SDK and the
engine's API), it prints build progress in the engine's own words (``Step 3/9 : RUN ...``)
that we stream to the user as it comes, and it builds with BuildKit where the user has it
set up. Every call has a timeout, keeps a bounded tail of its output, and raises
``EngineError`` (a ``ClipperException``) quoting that tail; nothing secret is put in argv.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from schooner.runtime.errors import ClipperException

__all__ = ["Engine", "EngineError"]

logger = logging.getLogger(__name__)

_TAIL_LINES = 40
_LOG_BYTES = 256 * 1024
_DEFAULT_TIMEOUT_S = 120.0


class EngineError(ClipperException):
    """A ``docker`` command failed; the message quotes the end of what it printed."""


class Engine:
    """``docker`` commands against one engine (``host``: ``DOCKER_HOST``'s value, or the
    CLI's default)."""

    def __init__(self, executable: str = "docker", host: str | None = None) -> None:
        self.executable = executable
        self.host = host

    def _argv(self, args: Sequence[str]) -> list[str]:
        found = shutil.which(self.executable)
        if found is None:
            raise EngineError(
                f"the Docker CLI ({self.executable!r}) is not on PATH; install Docker "
                "(https://docs.docker.com/engine/install/) or use LocalContainerManager"
            )
        return [found, *(["--host", self.host] if self.host else []), *args]

    def available(self) -> bool:
        """True if the CLI is there and an engine answers it."""
        try:
            self.run(["version", "--format", "{{.Server.Version}}"], timeout=10.0)
        except EngineError:
            return False
        return True

    def run(
        self, args: Sequence[str], timeout: float = _DEFAULT_TIMEOUT_S, check: bool = True
    ) -> str:
        """Run ``docker <args>`` and return its standard output."""
        argv = self._argv(args)
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                env={**os.environ, "DOCKER_CLI_HINTS": "false"},
            )
        except subprocess.TimeoutExpired:
            raise EngineError(f"`docker {_shown(args)}` did not finish within {timeout:.0f}s") from None
        if check and result.returncode != 0:
            raise EngineError(
                f"`docker {_shown(args)}` failed (exit code {result.returncode}):\n"
                f"{_tail(result.stderr or result.stdout)}"
            )
        return result.stdout

    def stream(
        self,
        args: Sequence[str],
        on_line: Callable[[str], None],
        timeout: float,
        failure: Callable[[list[str]], str] | None = None,
    ) -> None:
        """Run ``docker <args>``, handing each line of its output to ``on_line`` as it comes;
        on failure raise EngineError with ``failure(kept lines)`` (default: their end)."""
        argv = self._argv(args)
        kept: deque[str] = deque(maxlen=2000)
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, env={**os.environ, "DOCKER_CLI_HINTS": "false"},
        ) as process:
            timer = _Deadline(process, timeout)
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip("\n")[:4000]
                kept.append(line)
                on_line(line)
            code = process.wait()
            timer.cancel()
        if timer.fired:
            raise EngineError(f"`docker {_shown(args)}` did not finish within {timeout:.0f}s")
        if code != 0:
            lines = list(kept)
            detail = failure(lines) if failure else "\n".join(lines[-_TAIL_LINES:])
            raise EngineError(f"`docker {_shown(args)}` failed (exit code {code}):\n{detail}")

    def inspect(self, kind: str, names: Sequence[str]) -> list[dict[str, Any]]:
        """``docker <kind> inspect`` of ``names`` (those that exist)."""
        if not names:
            return []
        out = self.run([kind, "inspect", *names], check=False)
        try:
            found: list[dict[str, Any]] = json.loads(out or "[]")
        except json.JSONDecodeError:
            return []
        return found

    def ids(self, kind: str, labels: dict[str, str], all_states: bool = True) -> list[str]:
        """IDs of the containers, networks or volumes carrying every one of ``labels``."""
        filters = [arg for k, v in labels.items() for arg in ("--filter", f"label={k}={v}")]
        if kind == "container":
            args = ["ps", "--quiet", "--no-trunc", *(["--all"] if all_states else []), *filters]
        elif kind == "network":
            args = ["network", "ls", "--quiet", "--no-trunc", *filters]
        else:
            args = ["volume", "ls", "--quiet", *filters]
        return self.run(args).split()

    def logs(self, container: str, lines: int = _TAIL_LINES) -> str:
        """The last ``lines`` lines a container printed (stdout and stderr), at most
        ``_LOG_BYTES`` of them: a container controls what it prints."""
        with subprocess.Popen(
            self._argv(["logs", "--tail", str(lines), container]), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        ) as process:
            timer = _Deadline(process, 60.0)
            assert process.stdout is not None
            data = process.stdout.read(_LOG_BYTES)
            process.kill()
            timer.cancel()
        return _tail(data.decode("utf-8", "replace"), lines) or "(no output)"

    def save_logs(self, container: str, path: os.PathLike[str] | str) -> None:
        """Write everything a container printed to ``path`` (streamed, not held in memory)."""
        with open(path, "wb") as out:
            try:
                subprocess.run(
                    self._argv(["logs", container]), stdout=out, stderr=subprocess.STDOUT,
                    timeout=300.0, stdin=subprocess.DEVNULL, check=False,
                )
            except subprocess.TimeoutExpired:
                out.write(b"\n(docker logs timed out)\n")


class _Deadline:
    """Kill a process that outlives its timeout (streamed commands cannot use run's)."""

    def __init__(self, process: subprocess.Popen[Any], timeout: float) -> None:
        self.fired = False
        self._process = process
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._process.kill()

    def cancel(self) -> None:
        self._timer.cancel()


def _shown(args: Sequence[str]) -> str:
    shown = " ".join(args)
    return shown if len(shown) <= 200 else shown[:200] + " ..."


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
