"""The interface every framework implements.

A framework is one module under ``schooner.frameworks`` (or a third party's, registered
through the ``schooner.frameworks`` entry-point group) holding two things that share the
artifact contract:

* a module-level ``save(...)`` used by the admin side (its deployer) to write an artifact
  directory, with arguments that suit the framework;
* a :class:`Framework` subclass used by the container to load that directory and predict.

The container runtime, not the framework, checks that N inputs gave N outputs and that each
output is a ``str``; a framework only turns a batch into outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from schooner.frameworks.artifact import Artifact

__all__ = ["Framework", "Batch"]

# A batch as the runtime hands it over: a 2-D numpy array when every input has the same
# size (one row per input), else a list of 1-D numpy arrays; a list of str for strings.
Batch = Any


class Framework(ABC):
    """Loads one artifact and answers batches.

    Lifetime, in one container process:

    1. ``__init__(artifact, device)`` — cheap; records where things are.
    2. ``load()`` — once, before the container registers with the frontend and before it
       reports ready. Import the framework library here (never at module import time) and
       raise :class:`~schooner.runtime.errors.MissingExtra` if it is absent. Raise
       :class:`~schooner.runtime.errors.IncompatibleArtifact` if the artifact was made with
       versions this environment cannot load.
    3. ``predict(batch)`` — once per batch, from the container's loop; returns one ``str``
       per input, in order. Anything it raises fails that batch only.
    4. ``close()`` — once, when the container stops (also after a failed ``load``): release
       what ``load`` started (a Spark session, say). The default does nothing.
    """

    #: registry name, e.g. "closure"
    name: ClassVar[str]
    #: the pip extra that installs the framework's library (None: nothing extra needed)
    extra: ClassVar[str | None] = None
    #: devices this framework can run on ("cpu", "cuda")
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    #: the base image (``base_images/<name>/``) whose requirements its replicas run with
    base_image: ClassVar[str] = "python"
    #: what an interpreter needs to load this framework's artifacts (requirement strings);
    #: the local manager runs replicas in the deploying interpreter when it meets them
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, artifact: Artifact, device: str = "cpu") -> None:
        self.artifact = artifact
        self.device = device

    @abstractmethod
    def load(self) -> None:
        """Load the model into memory (see the class docstring for when this runs)."""

    @abstractmethod
    def predict(self, batch: Batch) -> Sequence[str]:
        """Answer one batch with one string per input."""

    def close(self) -> None:  # noqa: B027 (an optional hook, empty on purpose)
        """Release what :meth:`load` acquired; called once when the container stops."""
