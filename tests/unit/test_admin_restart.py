"""RestartPolicy (pure) and Child driven with real short-lived processes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from schooner.admin.managers.local.children import Child, ChildSpec, ChildState
from schooner.admin.managers.local.restart import RestartPolicy

FAST = RestartPolicy(initial_delay_s=0.05, max_delay_s=0.4, factor=2.0,
                     config_error_delay_s=5.0, stable_after_s=1.0)


def test_delay_grows_exponentially_up_to_the_cap():
    policy = RestartPolicy(initial_delay_s=0.5, max_delay_s=4.0, factor=2.0)
    assert [policy.delay(n, 1) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_config_errors_wait_longer():
    policy = RestartPolicy(initial_delay_s=0.5, config_error_delay_s=30.0)
    assert policy.delay(1, 2) == 30.0
    assert policy.delay(1, 3) == 30.0
    assert policy.delay(1, 1) == 0.5
    assert policy.is_config_error(3) and not policy.is_config_error(None)


def test_a_stable_run_resets_the_failure_count():
    policy = RestartPolicy(stable_after_s=10.0)
    assert policy.failures_after(5, ran_for_s=11.0) == 1
    assert policy.failures_after(5, ran_for_s=1.0) == 6


def _child(tmp_path: Path, code: str, policy: RestartPolicy = FAST) -> Child:
    spec = ChildSpec("c", "replica", [sys.executable, "-c", code], tmp_path / "c.log",
                     environment=lambda: {"SCHOONER_TEST_VALUE": "42"})
    return Child(spec, policy)


def _drive(child: Child, seconds: float, until=lambda c: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until(child):
        child.tick(time.monotonic())
        time.sleep(0.01)


def test_crashing_child_is_restarted_with_backoff(tmp_path):
    child = _child(tmp_path, "import sys; sys.exit(1)")
    try:
        _drive(child, 10.0, until=lambda c: c.restarts >= 3)
        assert child.restarts >= 3
        assert child.last_exit_code == 1
        assert child.failures >= 3
        log = (tmp_path / "c.log").read_text()
        assert log.count("starting c") == child.starts
    finally:
        child.kill()


def test_config_error_exit_is_reported_and_not_restarted_quickly(tmp_path):
    child = _child(tmp_path, "import sys; sys.exit(3)")
    _drive(child, 10.0, until=lambda c: c.last_exit_code is not None)
    _drive(child, 0.5)
    assert child.state == ChildState.CONFIG_ERROR
    assert child.last_exit_code == 3
    assert child.restarts == 0
    assert child.info()["next_start_in_s"] > 3.0
    child.request_stop(time.monotonic(), 1.0)
    assert child.state == ChildState.STOPPED


def test_child_gets_its_environment_and_logs_output(tmp_path):
    child = _child(tmp_path, "import os; print('value', os.environ['SCHOONER_TEST_VALUE'])")
    _drive(child, 10.0, until=lambda c: c.last_exit_code is not None)
    child.request_stop(time.monotonic(), 1.0)
    assert child.last_exit_code == 0
    assert "value 42" in (tmp_path / "c.log").read_text()


def test_stop_escalates_to_sigkill_after_the_grace_period(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "print('READY-MARK', flush=True); time.sleep(60)"
    child = _child(tmp_path, code)
    child.tick(time.monotonic())
    deadline = time.monotonic() + 10
    while "READY-MARK" not in (tmp_path / "c.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    child.request_stop(time.monotonic(), grace_s=0.3)
    assert child.state == ChildState.STOPPING
    _drive(child, 10.0, until=lambda c: not c.running)
    assert child.state == ChildState.STOPPED
    assert child.last_exit_code == -9
    assert child.restarts == 0


@pytest.mark.parametrize("code, expected", [(0, 0), (1, 1)])
def test_a_stopped_child_is_not_restarted(tmp_path, code, expected):
    child = _child(tmp_path, f"import sys, time; time.sleep(0.2); sys.exit({code})")
    child.tick(time.monotonic())
    child.wanted = False
    _drive(child, 10.0, until=lambda c: not c.running)
    _drive(child, 0.3)
    assert child.starts == 1 and child.last_exit_code == expected
