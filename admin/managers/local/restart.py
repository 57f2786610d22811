"""When the supervisor restarts a child that exited: exponential backoff, longer for bad setups.

Pure policy, no processes: the supervisor asks ``delay`` each time a child it wants running
has exited. A child that ran for ``stable_after_s`` before exiting starts again from the
initial delay; one that keeps crashing waits twice as long each time, up to ``max_delay_s``.
Exit codes in ``config_error_codes`` (2 = bad configuration, 3 = the artifact or framework
cannot be loaded, as the container runtime defines them) will not fix themselves by
restarting, so they wait at least ``config_error_delay_s`` and are reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

from schooner.runtime.config import EXIT_ARTIFACT, EXIT_CONFIG

__all__ = ["RestartPolicy", "CONFIG_ERROR_CODES"]

CONFIG_ERROR_CODES: frozenset[int] = frozenset({EXIT_CONFIG, EXIT_ARTIFACT})


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0
    factor: float = 2.0
    config_error_delay_s: float = 30.0
    stable_after_s: float = 10.0
    config_error_codes: frozenset[int] = CONFIG_ERROR_CODES

    def is_config_error(self, exit_code: int | None) -> bool:
        return exit_code is not None and exit_code in self.config_error_codes

    def failures_after(self, previous_failures: int, ran_for_s: float) -> int:
        """Consecutive failures counting this exit; a stable run resets the count."""
        return 1 if ran_for_s >= self.stable_after_s else previous_failures + 1

    def delay(self, failures: int, exit_code: int | None) -> float:
        """Seconds to wait before restarting a child after its ``failures``-th exit in a row."""
        backoff = self.initial_delay_s * self.factor ** max(0, failures - 1)
        backoff = min(backoff, self.max_delay_s)
        if self.is_config_error(exit_code):
            return max(backoff, self.config_error_delay_s)
        return backoff
