"""What every deployer does once its framework has saved the model: build, deploy, link.

A framework deployer only knows how to write its artifact (``save`` in its
``schooner.frameworks`` module); these two functions turn that into Clipper's
``deploy_<framework>_model`` and ``create_endpoint`` behaviour, so that each deployer is a
thin, documented signature and the flow exists once.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from schooner.admin import dependencies, packaging
from schooner.admin.connection import ClipperConnection
from schooner.frameworks.artifact import MANIFEST_NAME

__all__ = ["deploy_artifact", "register_and_link"]

logger = logging.getLogger(__name__)


def deploy_artifact(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    save: Callable[[Path], Path],
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: Sequence[str] | None = None,
    imports: Sequence[Any] = (),
) -> None:
    """``save(directory)`` writes the artifact; then build it and deploy ``name:version``.

    The packages that ``imports`` (the user's function) import and the base image lacks
    are pinned into the manifest (``schooner.admin.dependencies``) and logged before the
    build. Returns once the replicas serve. The temporary directory is removed afterwards:
    ``build_model`` copies what it needs.
    """
    with tempfile.TemporaryDirectory(prefix=f"schooner-{name}-") as tmp:
        artifact = save(Path(tmp) / "model")
        logger.info("model %s:%s saved to %s", name, version, artifact)
        record_captured(artifact, imports, pkgs_to_install, base_image)
        clipper_conn.build_and_deploy_model(
            name, str(version), input_type, str(artifact), base_image, labels,
            registry, num_replicas, batch_size, list(pkgs_to_install or []),
        )


def record_captured(
    artifact: Path, imports: Sequence[Any], pkgs_to_install: Sequence[str] | None,
    base_image: str,
) -> list[str]:
    """Pin what ``imports`` need beyond the base image into the artifact's manifest."""
    base = packaging.package(artifact, base_image).base_image
    manifest_path = artifact / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    by_value = [str(m) for m in manifest.get("captured_modules", [])]
    found = dependencies.captured(imports, pkgs_to_install, base, by_value)
    manifest[dependencies.CAPTURED_KEY] = found
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if found:
        logger.info("%s imports packages its base image %r lacks; an image of it installs %s",
                    artifact.name, base, ", ".join(found))  # fmt: skip
    return found


def register_and_link(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    default_output: str,
    slo_micros: int,
    deploy: Callable[[], None],
) -> None:
    """Clipper's ``create_endpoint``: register app ``name``, ``deploy()`` model ``name``, link."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy()
    clipper_conn.link_model_to_app(name, name)
