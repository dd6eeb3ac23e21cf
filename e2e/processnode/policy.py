"""Restart decisions and crash back-off, as the kubelet makes them. Pure."""

from __future__ import annotations

from dataclasses import dataclass


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


@dataclass
class Backoff:
    """Delay before each restart: none for the first, then initial, doubling up to cap.

    The kubelet restarts a crashed container at once the first time and then waits 10 s,
    20 s, 40 s ... up to 5 min; a container that ran for twice the cap has recovered and
    starts over from no delay.
    """

    initial: float = 10.0
    cap: float = 300.0
    crashes: int = 0

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= 2 * self.cap:
            self.crashes = 0
        self.crashes += 1
        if self.crashes == 1:
            return 0.0
        return float(min(self.initial * 2 ** (self.crashes - 2), self.cap))
