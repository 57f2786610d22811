"""``schooner-container`` / ``python -m schooner.runtime``: the container entry point.

Exit codes: 0 after SIGTERM or SIGINT, 2 for bad configuration (including a metrics port
that cannot be bound, or a frontend socket that can never be reached), 3 when the artifact or
its framework cannot be loaded (a supervisor should not restart those in a tight loop). Each
is reported as one line, never a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from schooner.frameworks.artifact import open_artifact
from schooner.frameworks.base import Framework
from schooner.frameworks.registry import resolve
from schooner.runtime.config import EXIT_ARTIFACT, EXIT_CONFIG, ContainerConfig
from schooner.runtime.container import Container
from schooner.runtime.errors import ConfigError, SchoonerError
from schooner.runtime.frontends import EveryFrontend
from schooner.runtime.memory import keep_freed_memory, settle_gc
from schooner.runtime.metrics import ContainerMetrics, MetricsServer

log = logging.getLogger("schooner.runtime")


def main() -> int:
    try:
        config = ContainerConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"schooner-container: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s [{config.model_name}:{config.model_version}] "
        "%(name)s: %(message)s",
    )
    keep_freed_memory(config.keep_freed_bytes)
    metrics = ContainerMetrics(config.model_name, config.model_version)
    server = None
    if config.metrics_port is not None:
        try:
            server = MetricsServer(metrics, config.metrics_host, config.metrics_port).start()
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        log.info("metrics and health on http://%s:%d", config.metrics_host, server.port)
    framework: Framework | None = None
    try:
        artifact = open_artifact(config.model_path)
        framework_cls = resolve(config.framework or artifact.framework)
        if config.device != "cpu" and "cuda" not in framework_cls.devices:
            raise ConfigError(
                [f"SCHOONER_DEVICE={config.device}: the {framework_cls.name} framework runs on cpu only"]
            )
        framework = framework_cls(artifact, config.device)
        framework.load()
    except SchoonerError as exc:
        if framework is not None:
            framework.close()
        if server is not None:
            server.close()
        if isinstance(exc, ConfigError):
            log.error("%s", exc)
            return EXIT_CONFIG
        log.error("cannot load the model at %s: %s", config.model_path, exc)
        return EXIT_ARTIFACT

    container: Container | EveryFrontend = (
        EveryFrontend(config, framework, metrics) if config.every_frontend
        else Container(config, framework, metrics)
    )  # fmt: skip

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: finishing the current batch and stopping", signal.Signals(signum).name)
        container.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settle_gc()  # the loaded model out of the collector's sight; it runs less often
    _mark_ready(config, metrics, server.port if server is not None else None)
    log.info("container ready: %s framework, model %s, frontend %s", framework_cls.name,
             artifact.path, config.frontend_address)  # fmt: skip
    try:
        container.run()
    except ConfigError as exc:  # the frontend's address can never be reached
        log.error("%s", exc)
        return EXIT_CONFIG
    finally:
        framework.close()
        if config.ready_file is not None:
            config.ready_file.unlink(missing_ok=True)
        if server is not None:
            server.close()
    log.info("stopped")
    return 0


def _mark_ready(config: ContainerConfig, metrics: ContainerMetrics, port: int | None) -> None:
    """Write the ready file: ``ready``, then ``metrics_port=N`` when metrics are served (a
    supervisor that asked for port 0 reads the port bound from there: no race for a port)."""
    metrics.ready = True
    if config.ready_file is None:
        return
    try:
        config.ready_file.parent.mkdir(parents=True, exist_ok=True)
        config.ready_file.write_text("ready\n" + (f"metrics_port={port}\n" if port else ""))
    except OSError as exc:
        log.warning("cannot write the readiness file %s: %s", config.ready_file, exc)


if __name__ == "__main__":
    sys.exit(main())
