from pathlib import Path

import pytest

from schooner.runtime.config import ContainerConfig
from schooner.runtime.errors import ConfigError
from schooner.runtime.wire import InputType

BASE = {"CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1"}


def test_defaults_follow_clipper():
    c = ContainerConfig.from_env(BASE)
    assert (c.frontend_host, c.frontend_port, c.input_type) == ("127.0.0.1", 7000, InputType.DOUBLES)
    assert c.model_path == Path("/model") and c.ready_file == Path("/model_is_ready.check")
    assert c.device == "cpu" and c.max_batch_size == 0 and c.metrics_port is None
    assert c.frontend_address == "tcp://127.0.0.1:7000"


def test_every_variable_parsed():
    c = ContainerConfig.from_env({
        **BASE, "CLIPPER_IP": "10.0.0.2", "CLIPPER_PORT": "7100", "CLIPPER_INPUT_TYPE": "s",
        "CLIPPER_MODEL_PATH": "/art", "SCHOONER_DEVICE": "CUDA:1", "SCHOONER_MAX_BATCH_SIZE": "32",
        "SCHOONER_METRICS_PORT": "0", "SCHOONER_READY_FILE": "none",
        "SCHOONER_HEARTBEAT_INTERVAL": "0.5", "SCHOONER_SESSION_TIMEOUT": "3",
        "SCHOONER_ZERO_COPY": "yes", "SCHOONER_LOG_LEVEL": "debug",
    })  # fmt: skip
    assert c.frontend_address == "tcp://10.0.0.2:7100" and c.input_type is InputType.STRINGS
    assert c.device == "cuda:1" and c.max_batch_size == 32 and c.metrics_port == 0
    assert c.ready_file is None and c.heartbeat_interval == 0.5 and c.session_timeout == 3
    assert c.zero_copy and c.log_level == "DEBUG"


def test_all_errors_reported_together():
    with pytest.raises(ConfigError) as info:
        ContainerConfig.from_env({
            "CLIPPER_PORT": "seventy", "CLIPPER_INPUT_TYPE": "tensors", "SCHOONER_DEVICE": "tpu",
            "SCHOONER_MAX_BATCH_SIZE": "-1", "SCHOONER_LOG_LEVEL": "loud",
        })  # fmt: skip
    problems = info.value.problems
    assert len(problems) == 7, problems
    text = str(info.value)
    for name in ("CLIPPER_MODEL_NAME", "CLIPPER_MODEL_VERSION", "CLIPPER_PORT",
                 "CLIPPER_INPUT_TYPE", "SCHOONER_DEVICE", "SCHOONER_MAX_BATCH_SIZE",
                 "SCHOONER_LOG_LEVEL"):  # fmt: skip
        assert name in text


def test_timeout_must_exceed_heartbeat():
    with pytest.raises(ConfigError, match="SESSION_TIMEOUT"):
        ContainerConfig.from_env({**BASE, "SCHOONER_HEARTBEAT_INTERVAL": "5",
                                  "SCHOONER_SESSION_TIMEOUT": "2"})  # fmt: skip


def test_config_is_frozen():
    c = ContainerConfig.from_env(BASE)
    with pytest.raises(AttributeError):
        c.model_name = "other"  # type: ignore[misc]


def test_busy_poll_is_off_by_default_bounded_and_round_trips():
    assert ContainerConfig.from_env(BASE).busy_poll_us == 0
    c = ContainerConfig.from_env({**BASE, "SCHOONER_BUSY_POLL_US": "50"})
    assert c.busy_poll_us == 50 and c.to_env()["SCHOONER_BUSY_POLL_US"] == "50"
    assert ContainerConfig.from_env(c.to_env()) == c
    for bad in ("-1", "10001", "0.5", "spin"):
        with pytest.raises(ConfigError, match="SCHOONER_BUSY_POLL_US"):
            ContainerConfig.from_env({**BASE, "SCHOONER_BUSY_POLL_US": bad})


def test_keep_freed_bytes_is_bounded_and_round_trips():
    assert ContainerConfig.from_env(BASE).keep_freed_bytes == 64 << 20
    c = ContainerConfig.from_env({**BASE, "SCHOONER_KEEP_FREED_BYTES": "0"})
    assert c.keep_freed_bytes == 0 and c.to_env()["SCHOONER_KEEP_FREED_BYTES"] == "0"
    assert ContainerConfig.from_env(c.to_env()) == c
    for bad in ("-1", str((1 << 30) + 1), "lots"):
        with pytest.raises(ConfigError, match="SCHOONER_KEEP_FREED_BYTES"):
            ContainerConfig.from_env({**BASE, "SCHOONER_KEEP_FREED_BYTES": bad})
