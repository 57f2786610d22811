"""Schooner's errors, in one tree.

    SchoonerError                 base of everything Schooner raises on purpose
    ├── ConfigError               bad configuration; lists every problem at once
    ├── WireError                 a malformed or unsupported RPC message
    ├── ArtifactError             an artifact directory that cannot be used
    │   └── IncompatibleArtifact  made with versions this environment cannot load
    ├── FrameworkError            a framework that cannot be found or imported
    │   └── MissingExtra          its library is not installed (names the extra)
    ├── PredictionError           a batch whose predict raised or broke the contract
    └── ClipperException          admin-side failures (same name as Clipper's)

Foreign exceptions are converted at one boundary each (``raise ... from exc``):
unpickling in the artifact loader, the model's predict in the container loop, HTTP in
the admin client.
"""

from __future__ import annotations

__all__ = [
    "SchoonerError",
    "ConfigError",
    "WireError",
    "ArtifactError",
    "IncompatibleArtifact",
    "FrameworkError",
    "MissingExtra",
    "PredictionError",
    "ClipperException",
]


class SchoonerError(Exception):
    """Base of every error Schooner raises on purpose."""


class ConfigError(SchoonerError):
    """Configuration that cannot be used. ``problems`` holds every one found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:  # one problem, one line
            super().__init__(f"invalid configuration: {self.problems[0]}")
        else:
            super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


class WireError(SchoonerError, ValueError):
    """A message that does not follow Clipper RPC v3 (or Schooner's negotiated extension)."""


class ArtifactError(SchoonerError):
    """An artifact directory that is missing, incomplete or unreadable."""


class IncompatibleArtifact(ArtifactError):
    """An artifact made with versions that this environment cannot load."""


class FrameworkError(SchoonerError):
    """A framework that is unknown or cannot be imported."""


class MissingExtra(FrameworkError):
    """A framework whose library is not installed; the message names the extra."""

    def __init__(self, framework: str, extra: str, missing: str):
        self.framework, self.extra, self.missing = framework, extra, missing
        super().__init__(
            f"the {framework} framework needs {missing!r}, which is not installed: "
            f"pip install 'schooner[{extra}]'"
        )


class PredictionError(SchoonerError):
    """A batch whose predict raised, or returned the wrong number or type of outputs."""


class ClipperException(SchoonerError):
    """An admin operation that failed (kept under Clipper's name so ported code catches it)."""
