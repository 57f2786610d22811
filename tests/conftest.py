"""Fixtures shared by every test folder: free ports, child processes, bounded waits.

Nothing here imports Schooner at import time, so unit tests collect even while a
package is half-written. The process fixtures start real processes the way users do
(``python -m schooner.frontend``, ``python -m schooner.runtime``), each with its log in a
file under ``tmp_path``; every wait has a deadline, and a failed wait shows the tail of
the logs of the processes involved. Teardown terminates (SIGTERM) and, if need be, kills
every process a test started.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

log = logging.getLogger(__name__)

T = TypeVar("T")

# Environments the tests build (MXNet's, the [mxnet] extra's) live in this checkout's ignored
# .schooner-envs/ unless SCHOONER_ENVS says otherwise, so two checkouts (two CI runs) never
# share one: an environment links the Schooner packages of the checkout that last used it.
os.environ.setdefault("SCHOONER_ENVS", str(Path(__file__).resolve().parents[1] / ".schooner-envs"))

# Ports handed out in this session, so two fixtures never get the same one.
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (and that this session has not handed out)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free TCP port found")


def free_ports_in_a_row(count: int, host: str = "127.0.0.1") -> int:
    """A port p such that p .. p + count - 1 are all free now and none was handed out (a
    frontend's worker i binds its RPC port + i); all of them are handed out."""
    for _ in range(200):
        base = free_port(host)
        wanted = range(base + 1, base + count)
        if any(p in _handed_out or p > 65535 for p in wanted):
            continue
        try:
            for port in wanted:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _handed_out.update(wanted)
        return base
    raise RuntimeError(f"no {count} free TCP ports in a row found")


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message says what was awaited and shows the logs."""


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (OSError,),
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, at most ``timeout`` seconds.

    Exceptions of the ``ignore`` types (connection refused and the like) count as "not
    yet". On time-out raises WaitTimeout, with ``context()`` (e.g. log tails) appended.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last_error, value = exc, None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    message = f"timed out after {timeout:.1f}s waiting for {what}"
    if last_error is not None:
        message += f" (last error: {last_error!r})"
    if context is not None:
        message += "\n" + context()
    raise WaitTimeout(message)


# --------------------------------------------------------------------------- markers


def _cuda_available() -> bool:
    import shutil

    if shutil.which("nvidia-smi") is None:
        return False
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


# What each framework's GPU tests need besides a device: its distributions (the first found
# is reported), a probe that prints something only for a CUDA build, and what to install.
_CUDA_BUILDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "torch": (("torch",), "import torch; print(torch.version.cuda or '')",
              "is a CPU-only build: install PyPI's torch, the CUDA build"),
    "onnxruntime": (("onnxruntime-gpu", "onnxruntime"),
                    "import onnxruntime as o; "
                    "print('CUDAExecutionProvider' in o.get_available_providers() or '')",
                    "has no CUDAExecutionProvider: install onnxruntime-gpu"),
    "tensorflow": (("tensorflow", "tensorflow-cpu"),
                   "import tensorflow as tf; print(tf.test.is_built_with_cuda() or '')",
                   "is built without CUDA: install tensorflow[and-cuda]"),
}


def _cuda_build_missing(library: str) -> str | None:
    """Why ``library`` cannot use CUDA here (None when it can), asked in a child process so
    that collecting tests imports no framework."""
    from importlib import metadata

    dists, probe, missing = _CUDA_BUILDS[library]
    found = []
    for dist in dists:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if not found:
        return f"{library} is not installed (README: \"GPU tests\")"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    if done.returncode == 0 and done.stdout.strip():
        return None
    return f"{found[0]} {missing} (README: \"GPU tests\")"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run only where a CUDA device is visible, and ``gpu("torch")`` (etc.)
    ones only where that library is a CUDA build; each skip says exactly what is missing."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    if not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (nvidia-smi finds none)")
        for item in gpu_items:
            item.add_marker(skip)
        return
    reasons: dict[str, str | None] = {}
    for item in gpu_items:
        marker = item.get_closest_marker("gpu")
        for library in marker.args if marker else ():
            if library not in reasons:
                reasons[library] = _cuda_build_missing(library)
            if reasons[library]:
                item.add_marker(pytest.mark.skip(reason=reasons[library]))
                break


# --------------------------------------------------------------------------- child processes


@dataclass
class ChildProcess:
    """A process started by the ``spawn`` fixture, its output in ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    _log_file: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def describe(self, lines: int = 40) -> str:
        state = "running" if self.alive else f"exited with {self.returncode}"
        title = f"----- {self.name} (pid {self.pid}, {state}) last log lines -----"
        return f"{title}\n{self.tail(lines)}"

    def wait_until(
        self,
        predicate: Callable[[], T],
        *,
        timeout: float,
        what: str,
        interval: float = 0.05,
        ignore: tuple[type[BaseException], ...] = (OSError,),
        others: Sequence[ChildProcess] = (),
    ) -> T:
        """Like ``wait_until``, but fails at once if this process exits, showing its log."""

        def probe() -> T | None:
            if not self.alive:
                raise WaitTimeout(f"{self.name} exited while waiting for {what}\n{context()}")
            return predicate()

        def context() -> str:
            return "\n".join(p.describe() for p in (self, *others))

        return wait_until(
            probe, timeout=timeout, what=what, interval=interval, ignore=ignore, context=context
        )  # type: ignore[return-value]

    def wait_for_log(self, text: str, *, timeout: float) -> None:
        self.wait_until(lambda: text in self.log(), timeout=timeout, what=f"{text!r} in the log")

    def wait_for_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(
                f"{self.name} still running {timeout:.1f}s later\n{self.describe()}"
            ) from None

    def send_signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        try:
            if self.alive:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.error("%s ignored SIGTERM for %.1fs; killing it", self.name, timeout)
                    self.popen.kill()
                    self.popen.wait(timeout=timeout)
            return int(self.popen.returncode)
        finally:
            self._log_file.close()


def child_env(overrides: Mapping[str, str | int | float] | None = None) -> dict[str, str]:
    """This process's environment without Schooner/Clipper settings, plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SCHOONER_", "CLIPPER_")) and k != "PYTEST_CURRENT_TEST"
    }
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (overrides or {}).items():
        env[key] = str(value)
    return env


Spawn = Callable[..., ChildProcess]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item, so fixtures know whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def spawn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Spawn]:
    """Start processes for one test; all are stopped at teardown.

    ``spawn(name, argv, env=None, cwd=None) -> ChildProcess``; stdout and stderr go to
    ``tmp_path/<name>.log``. When the test failed, teardown logs every process's log tail.
    """
    started: list[ChildProcess] = []

    def _spawn(
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str | int | float] | None = None,
        cwd: Path | None = None,
    ) -> ChildProcess:
        log_path = tmp_path / f"{name}.log"
        n = 1
        while log_path.exists():
            n += 1
            log_path = tmp_path / f"{name}-{n}.log"
        log_file = open(log_path, "wb")  # closed by ChildProcess.stop
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env(env),
                cwd=cwd or tmp_path,
            )
        except BaseException:
            log_file.close()
            raise
        proc = ChildProcess(name, list(argv), log_path, popen, log_file)
        started.append(proc)
        return proc

    yield _spawn

    failed = getattr(request.node, "report_call", None)
    for proc in reversed(started):
        proc.stop()
    if failed is not None and failed.failed:
        for proc in started:
            log.error("%s", proc.describe(80))


# --------------------------------------------------------------------------- Schooner processes


def post_json(
    url: str, body: Any = None, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    """POST a JSON body; returns (status, parsed JSON or the raw text if it is not JSON)."""
    import requests

    resp = requests.post(url, json=body if body is not None else {}, timeout=timeout,
                         headers=dict(headers or {}))  # fmt: skip
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text


def get_json(url: str, *, timeout: float = 10.0) -> tuple[int, Any]:
    import requests

    resp = requests.get(url, timeout=timeout)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text


@dataclass
class FrontendProcess:
    """A running ``python -m schooner.frontend`` on free ports of 127.0.0.1."""

    process: ChildProcess
    query_port: int
    management_port: int
    rpc_port: int
    state_db: Path
    host: str = "127.0.0.1"
    rpc_socket: str | None = None  # the local Unix socket, when started with one

    @property
    def query_url(self) -> str:
        return f"http://{self.host}:{self.query_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def admin_token(self) -> str:
        """The management API's token (``admin.token`` beside the state database, unless the
        test gave the frontend another one)."""
        return (self.state_db.parent / "admin.token").read_text().strip()

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def admin(self, path: str, body: Any = None, *, expect: int | None = 200) -> Any:
        """POST to the management API (``path`` like "add_app" or "/admin/add_app")."""
        path = path if path.startswith("/") else f"/admin/{path}"
        status, answer = post_json(self.management_url + path, body, headers=self.admin_headers)
        if expect is not None and status != expect:
            raise AssertionError(
                f"{path} {body!r} answered {status} {answer!r}, expected {expect}\n"
                + self.process.describe()
            )
        return answer

    def predict(self, app: str, body: Any, *, timeout: float = 30.0) -> tuple[int, Any]:
        return post_json(f"{self.query_url}/{app}/predict", body, timeout=timeout)

    def containers(self) -> list[Any]:
        """The connected replicas (verbose dicts)."""
        return list(self.admin("get_all_containers", {"verbose": True}))

    def wait_for_replica(self, model_name: str, model_version: str, *, timeout: float) -> Any:
        """Until a replica of that model version is connected; returns its dict."""

        def find() -> Any:
            for c in self.containers():
                if c.get("model_name") == model_name and str(c.get("model_version")) == str(
                    model_version
                ):
                    return c
            return None

        return self.process.wait_until(
            find, timeout=timeout, interval=0.1, what=f"replica {model_name}:{model_version}"
        )


StartFrontend = Callable[..., FrontendProcess]


@pytest.fixture
def start_frontend(spawn: Spawn, tmp_path: Path) -> StartFrontend:
    """``start_frontend(state_db=None, extra_args=(), ready_timeout=30, local_socket=False)
    -> FrontendProcess``.

    Binds all three sockets to free ports on 127.0.0.1 (and, with ``local_socket``, a Unix
    socket in the abstract namespace for local containers), waits for "frontend ready" in
    the log and for GET /ready to answer 200.
    """

    def _start(
        *,
        state_db: Path | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
        name: str = "frontend",
        log_level: str = "DEBUG",
        local_socket: bool = False,
    ) -> FrontendProcess:
        query, management, rpc = free_port(), free_port(), free_port()
        db = state_db or tmp_path / f"{name}-state.db"
        socket_name = f"@schooner-test-{os.getpid()}-{rpc}" if local_socket else None
        if socket_name:
            extra_args = [*extra_args, "--rpc-socket", socket_name]
        argv = [
            sys.executable, "-m", "schooner.frontend",
            "--query-host", "127.0.0.1", "--query-port", str(query),
            "--management-host", "127.0.0.1", "--management-port", str(management),
            "--rpc-host", "127.0.0.1", "--rpc-port", str(rpc),
            "--state-db", str(db), "--log-level", log_level, *extra_args,
        ]  # fmt: skip
        proc = spawn(name, argv)
        frontend = FrontendProcess(proc, query, management, rpc, db, rpc_socket=socket_name)
        proc.wait_for_log("frontend ready", timeout=ready_timeout)
        proc.wait_until(
            lambda: get_json(frontend.query_url + "/ready", timeout=2)[0] == 200,
            timeout=ready_timeout,
            what="GET /ready = 200",
        )
        return frontend

    return _start


@dataclass
class ContainerProcess:
    """A running ``python -m schooner.runtime``."""

    process: ChildProcess
    ready_file: Path
    model_name: str
    model_version: str

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.process.wait_until(
            self.ready_file.exists, timeout=timeout, what=f"ready file {self.ready_file}"
        )


StartContainer = Callable[..., ContainerProcess]


@pytest.fixture
def start_container(spawn: Spawn, tmp_path: Path) -> StartContainer:
    """``start_container(model_path, *, rpc_port, model_name, model_version="1",
    input_type="doubles", env=None, wait_ready=True) -> ContainerProcess``.

    Runs the Schooner container against a frontend on 127.0.0.1:rpc_port with the
    environment of common.md (heartbeats every 0.5 s unless ``env`` says otherwise).
    """

    def _start(
        model_path: Path,
        *,
        rpc_port: int,
        model_name: str,
        model_version: str = "1",
        input_type: str = "doubles",
        env: Mapping[str, str | int | float] | None = None,
        wait_ready: bool = True,
        ready_timeout: float = 60.0,
        name: str | None = None,
    ) -> ContainerProcess:
        name = name or f"container-{model_name}-{model_version}"
        ready_file = tmp_path / f"{name}.ready"
        full_env: dict[str, str | int | float] = {
            "CLIPPER_MODEL_NAME": model_name,
            "CLIPPER_MODEL_VERSION": model_version,
            "CLIPPER_IP": "127.0.0.1",
            "CLIPPER_PORT": rpc_port,
            "CLIPPER_INPUT_TYPE": input_type,
            "CLIPPER_MODEL_PATH": str(model_path),
            "SCHOONER_READY_FILE": str(ready_file),
            "SCHOONER_HEARTBEAT_INTERVAL": "0.5",
            "SCHOONER_LOG_LEVEL": "DEBUG",
            **(env or {}),
        }
        proc = spawn(name, [sys.executable, "-m", "schooner.runtime"], env=full_env)
        container = ContainerProcess(proc, ready_file, model_name, model_version)
        if wait_ready:
            container.wait_ready(ready_timeout)
        return container

    return _start


@pytest.fixture
def closure_artifact(tmp_path: Path) -> Callable[..., Path]:
    """``closure_artifact(func, name="model") -> Path``: an artifact directory made with
    ``schooner.frameworks.closure.save``. Define ``func`` inside a function so cloudpickle
    stores it by value (the container cannot import test modules)."""

    def _make(func: Callable[..., Any], name: str = "model", **kwargs: Any) -> Path:
        from schooner.frameworks.closure import save

        return Path(save(func, tmp_path / "artifacts" / name, **kwargs))

    return _make


class FakeClock:
    """A clock the test moves by hand (``clock.now += 0.05``), for policies with an injected
    clock (the dispatcher, admission control, the selection router)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def held_model(started: Path | str, release: Path | str, answer: Callable[[Any], Any],
               hold: Callable[[Any], bool] = lambda xs: True) -> Callable[[Any], Any]:
    """A model that answers ``answer(xs)``, but first, for a batch that ``hold`` picks,
    creates ``started`` and stays in predict until ``release`` exists (a minute at most).
    Pickled by value into the container, like any model defined in a test."""
    started, release = str(started), str(release)

    def model(xs: Any) -> Any:
        import os
        import time

        if hold(xs):
            open(started, "w").close()
            for _ in range(6000):
                if os.path.exists(release):
                    break
                time.sleep(0.01)
        return answer(xs)

    return model


# --------------------------------------------------------------------------- local clusters


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One running cluster (supervisor, frontend) per test module; stopped at the end.

    ``SCHOONER_HOME`` points into the module's temporary directory, except for the
    environments cache (``SCHOONER_ENVS``, this checkout's ``.schooner-envs/`` by default),
    which is kept between test runs so that an environment is built once.
    """
    with local_cluster("frameworks", home=tmp_path_factory.mktemp("home"),
                       deploy_timeout_s=240.0, grace_s=5.0) as conn:  # fmt: skip
        yield conn


@contextmanager
def local_cluster(name: str, *, home: Path | None = None, **options: Any) -> Iterator[Any]:
    """A started local cluster named ``name`` on free ports (``home``: its SCHOONER_HOME,
    None for the environment's); ``options`` go to LocalContainerManager. Stopped on exit."""
    from schooner.admin import ClipperConnection, LocalContainerManager
    from schooner.runtime.config import default_frontend_workers

    workers = default_frontend_workers(int(options.get("frontend_workers") or 0))
    manager = LocalContainerManager(
        cluster_name=name,
        clipper_query_port=free_port(),
        clipper_management_port=free_port(),
        clipper_rpc_port=free_ports_in_a_row(workers),
        schooner_home=home,
        **options,
    )
    conn = ClipperConnection(manager)
    try:
        conn.start_clipper()
        yield conn
    finally:
        conn.stop_all()
