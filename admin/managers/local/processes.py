"""Facts about local processes, ports and log files, read without third-party libraries.

Used by the supervisor (to pick ports for replicas) and by the local container manager
(to tell whether a cluster's processes are still there and to quote their logs in errors).
"""

from __future__ import annotations

import os
import signal
import socket
from collections import deque
from pathlib import Path

__all__ = ["is_alive", "log_tail", "free_port", "port_in_use", "kill_group"]


def is_alive(pid: int) -> bool:
    """True while ``pid`` names a running process (a zombie counts as gone).

    A process that has exited but was not yet reaped by its parent still answers
    ``os.kill(pid, 0)``; ``/proc/<pid>/stat`` tells the two apart on Linux. A process's
    first thread shows as a zombie as soon as it has exited, while the process's other
    threads may still be running (or exiting, after a SIGKILL) and holding its files, its
    listening sockets among them: the process is gone only when they are too.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    if not _exited(stat):
        return True
    try:
        threads = [t for t in Path(f"/proc/{pid}/task").iterdir() if t.name != str(pid)]
    except OSError:
        return False
    for thread in threads:
        try:
            if not _exited((thread / "stat").read_text()):
                return True
        except OSError:
            continue  # that thread is gone
    return False


def _exited(stat: str) -> bool:
    """A ``/proc/.../stat`` line's state is zombie or dead. The state letter follows the
    parenthesised command name, which may contain spaces."""
    return stat.rsplit(")", 1)[-1].split()[0:1] in (["Z"], ["X"])


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process of group ``pgid``; a group already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: str | os.PathLike[str], lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note saying it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            kept = deque(f.read().decode("utf-8", "replace").splitlines(), maxlen=lines)
    except OSError as exc:
        return f"(no log at {os.fspath(path)}: {exc.strerror})"
    return "\n".join(kept)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if binding ``host:port`` fails because something already holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
