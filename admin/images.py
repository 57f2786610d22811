"""Images: base images and model images built on a Docker engine, tagged, cached and pushed.

* The **Python base** every image starts FROM is a choice the user sees (``python_base``):
  the official ``python:3.11-slim-bookworm`` where a registry is reachable, or the Debian
  base built locally by ``base_images/debian/build.sh`` (``schooner/debian-python:3.11``),
  which is preferred whenever the engine has it. A missing base is one error naming the
  command that makes it, before any build starts.
* A **base image** (``base_images/<name>/``) is tagged ``schooner/<name>:<version>-<digest>``,
  the digest covering its whole build context and the Python base it starts from, so a
  changed requirement or a new Schooner makes a new image and an unchanged one is reused.
* A **model image** is tagged ``name:version`` (``registry/name:version`` when a registry is
  named), as Clipper's were, and labelled with the digest of its context and base; building
  an unchanged model again finds that label and builds nothing.

Build output is streamed to the ``schooner.admin.images`` logger step by step; a failing
build raises with the failing step's output.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from schooner.admin import packaging
from schooner.admin.engine import Engine, EngineError
from schooner.runtime.errors import ClipperException

__all__ = [
    "DEBIAN_BASE",
    "SLIM_BASE",
    "CONTEXT_LABEL",
    "python_base",
    "ensure_base_image",
    "build_model_image",
    "push",
    "base_image_ref",
]

logger = logging.getLogger(__name__)

DEBIAN_BASE = "schooner/debian-python:3.11"
SLIM_BASE = "python:3.11-slim-bookworm"
CONTEXT_LABEL = "ai.schooner.context"
_BASE_BUILD_TIMEOUT_S = 3600.0
_MODEL_BUILD_TIMEOUT_S = 1800.0
_STEP = re.compile(r"^(Step \d+/\d+ :|#\d+ \[)")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("schooner")
    except metadata.PackageNotFoundError:
        return "0"


def _has_image(engine: Engine, ref: str) -> bool:
    return bool(engine.inspect("image", [ref]))


def _label(engine: Engine, ref: str, key: str) -> str | None:
    found = engine.inspect("image", [ref])
    if not found:
        return None
    labels = (found[0].get("Config") or {}).get("Labels") or {}
    value = labels.get(key)
    return str(value) if value is not None else None


def python_base(engine: Engine, requested: str | None = None) -> str:
    """The Python base to build FROM: ``requested``, else the local Debian base if the
    engine has it, else the official slim image (pulled if missing). Raises, naming the
    command that makes it, when none of them can be had."""
    if requested is None and _has_image(engine, DEBIAN_BASE):
        return DEBIAN_BASE
    ref = requested or SLIM_BASE
    if _has_image(engine, ref):
        return ref
    if ref == DEBIAN_BASE:
        raise ClipperException(_missing_base(ref, "it is built locally, not pulled"))
    logger.info("pulling the Python base %s", ref)
    try:
        engine.run(["pull", ref], timeout=600.0)
    except EngineError as exc:
        raise ClipperException(_missing_base(ref, str(exc))) from None
    return ref


def _missing_base(ref: str, why: str) -> str:
    return (
        f"the Python base image {ref} is not on this Docker engine ({why.strip()}).\n"
        "Without a reachable registry, build the Debian base locally (needs root and "
        "debootstrap) with the one command:\n"
        "    sudo base_images/debian/build.sh\n"
        f"then deploy again (it is picked up as {DEBIAN_BASE}), or name a base you have "
        "with DockerContainerManager(python_base=...)"
    )


def base_image_ref(name: str, digest: str) -> str:
    return f"schooner/{name}:{_version()}-{digest[:12]}"


def ensure_base_image(
    engine: Engine, name: str, python: str, wheels: Sequence[Path] = ()
) -> str:
    """The reference of base image ``name`` built FROM ``python``; builds it if missing."""
    with tempfile.TemporaryDirectory(prefix=f"schooner-base-{name}-") as tmp:
        context = packaging.base_context(name, Path(tmp), wheels)
        base_id = engine.inspect("image", [python])[0]["Id"] if _has_image(engine, python) else python
        digest = packaging.context_digest(context, python, base_id)
        ref = base_image_ref(name, digest)
        if _has_image(engine, ref):
            logger.info("base image %s is built (cached)", ref)
            return ref
        logger.warning("building base image %s from %s (once; this can take minutes)", ref, python)
        build(engine, context, ref, {CONTEXT_LABEL: digest}, {"BASE": python},
              timeout=_BASE_BUILD_TIMEOUT_S)
    return ref


def build_model_image(engine: Engine, pkg: packaging.Package, ref: str, base_ref: str) -> bool:
    """Build model image ``ref`` FROM ``base_ref``; False (and nothing built) if ``ref``
    already is this artifact on this base."""
    with tempfile.TemporaryDirectory(prefix="schooner-model-") as tmp:
        context = packaging.model_context(pkg, base_ref, Path(tmp))
        base_id = engine.inspect("image", [base_ref])[0]["Id"]
        digest = packaging.context_digest(context, base_id)
        if _label(engine, ref, CONTEXT_LABEL) == digest:
            logger.info("model image %s is up to date (cached)", ref)
            return False
        if pkg.requirements:
            logger.info("model image %s installs %s", ref, ", ".join(pkg.requirements))
        build(engine, context, ref, {CONTEXT_LABEL: digest}, {}, timeout=_MODEL_BUILD_TIMEOUT_S)
    return True


def build(
    engine: Engine,
    context: Path,
    ref: str,
    labels: dict[str, str],
    build_args: dict[str, str],
    timeout: float,
) -> None:
    """``docker build`` of ``context`` as ``ref``, each step logged as it starts."""
    args = ["build", "--tag", ref, "--rm", "--force-rm"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    args.append(str(context))

    def on_line(line: str) -> None:
        if _STEP.match(line):
            logger.info("%s: %s", ref, line)
        else:
            logger.debug("%s: %s", ref, line)

    engine.stream(args, on_line, timeout, failure=_failing_step)
    logger.info("built image %s", ref)


def _failing_step(lines: list[str]) -> str:
    """The output of the last build step (the one that failed), bounded."""
    starts = [i for i, line in enumerate(lines) if _STEP.match(line)]
    since = starts[-1] if starts else 0
    step = lines[since:]
    if len(step) > 60:
        step = [step[0], "...", *step[-59:]]
    return "\n".join(step)


def push(engine: Engine, ref: str) -> None:
    """``docker push ref``; progress to the log."""
    logger.info("pushing %s", ref)
    engine.stream(["push", ref], lambda line: logger.debug("%s: %s", ref, line), 1800.0)
    logger.info("pushed %s", ref)
