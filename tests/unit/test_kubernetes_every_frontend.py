"""runtime.frontends: one session per address the frontends' name resolves to, followed."""

from __future__ import annotations

import threading

from schooner.frameworks.artifact import open_artifact
from schooner.frameworks.closure import save
from schooner.frameworks.registry import resolve
from schooner.runtime.config import ContainerConfig
from schooner.runtime.frontends import EveryFrontend, resolve_all
from schooner.runtime.metrics import ContainerMetrics


def loaded(tmp_path):
    def echo(xs):
        return [str(x) for x in xs]

    artifact = open_artifact(save(echo, tmp_path / "m"))
    framework = resolve(artifact.framework)(artifact, "cpu")
    framework.load()
    return framework


def test_sessions_follow_the_addresses(tmp_path):
    answers = [["10.0.0.1"], ["10.0.0.1", "10.0.0.2"], OSError("no DNS"), ["10.0.0.2"]]
    seen: list[set[str]] = []
    done = threading.Event()
    config = ContainerConfig("m", "1", frontend_host="frontends.ns.svc", frontend_port=7000,
                             every_frontend=True, ready_file=None)  # fmt: skip

    def lookup(host: str, port: int) -> list[str]:
        assert (host, port) == ("frontends.ns.svc", 7000)
        seen.append(set(every.sessions))
        if len(seen) > len(answers):
            done.set()
            every.stop()
            return sorted(every.sessions)
        answer = answers[len(seen) - 1]
        if isinstance(answer, OSError):
            raise answer
        return answer

    every = EveryFrontend(config, loaded(tmp_path), ContainerMetrics("m", "1"), resolve=lookup,
                          interval_s=0.01)  # fmt: skip
    runner = threading.Thread(target=every.run)
    runner.start()
    assert done.wait(30)
    runner.join(30)
    # before each lookup: what the previous answers left (a failed lookup keeps them)
    assert seen == [set(), {"10.0.0.1"}, {"10.0.0.1", "10.0.0.2"}, {"10.0.0.1", "10.0.0.2"},
                    {"10.0.0.2"}]  # fmt: skip
    assert every.sessions == {} and not runner.is_alive()


def test_each_session_is_one_frontend(tmp_path):
    config = ContainerConfig("m", "1", frontend_host="a,b", every_frontend=True)
    every = EveryFrontend(config, loaded(tmp_path), ContainerMetrics("m", "1"),
                          resolve=lambda h, p: ["10.0.0.7"])  # fmt: skip
    every._follow()
    container, _thread = every.sessions["10.0.0.7"]
    assert container.config.frontend_host == "10.0.0.7" and not container.config.every_frontend
    every.stop()
    container.stop()


def test_names_resolve_to_every_address():
    assert resolve_all("127.0.0.1, 127.0.0.2,127.0.0.1", 7000) == ["127.0.0.1", "127.0.0.2"]
    assert "127.0.0.1" in resolve_all("localhost", 7000)
