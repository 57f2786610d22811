"""The replica contract: ContainerConfig.to_env writes what from_env reads, for every setting."""

from pathlib import Path

from schooner.runtime.config import ContainerConfig
from schooner.runtime.wire import InputType


def test_to_env_round_trips_every_setting_that_is_not_a_default():
    config = ContainerConfig(
        model_name="m", model_version="3", frontend_host="frontend", frontend_port=7100,
        input_type=InputType.STRINGS, model_path=Path("/models/m"), device="cuda:1",
        max_batch_size=8, metrics_port=9100, metrics_host="127.0.0.1", ready_file=None,
        heartbeat_interval=2.5, session_timeout=12.0, framework="closure", zero_copy=True,
        rpc_socket="@s", log_level="DEBUG",
    )
    env = config.to_env()
    assert ContainerConfig.from_env(env) == config
    assert env["SCHOONER_READY_FILE"] == "none" and env["CLIPPER_INPUT_TYPE"] == "strings"


def test_to_env_names_only_the_model_and_what_differs_from_the_defaults():
    config = ContainerConfig(model_name="m", model_version="1", max_batch_size=4)
    assert config.to_env() == {
        "CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1", "SCHOONER_MAX_BATCH_SIZE": "4",
    }
    assert ContainerConfig.from_env(config.to_env()) == config
