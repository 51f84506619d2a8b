"""Refusals for clients that come back before their ``Retry-After`` are held until it passes.

A client that ignores ``Retry-After`` and resends at once turns every refusal into another
request: a thousand such clients make the event loop answer thousands of 429s a second, and the
requests it accepts starve. Holding the refusal of a connection that returns early until its
``Retry-After`` has passed costs a sleeping task, no CPU, and paces a closed-loop client to the
rate it was asked to keep; a client that waits as told is never held.
"""

from __future__ import annotations

import time

#: Client clocks and timers are not ours: a retry this much early still counts as on time.
TOLERANCE = 0.9
#: Expired entries are dropped whenever the table has grown this much since the last sweep.
SWEEP_GROWTH = 1024

Client = tuple[str, int]


class RetryPacer:
    """When each recently refused connection (client address and port) may come back."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self._not_before: dict[Client, float] = {}
        self._sweep_at = SWEEP_GROWTH

    def hold(self, client: Client | None) -> float:
        """Seconds to hold this refusal (0 unless the connection came back early); the
        connection's next refusal is held until ``Retry-After`` after this one is sent."""
        if client is None:
            return 0.0
        now = time.monotonic()
        delay = max(0.0, self._not_before.get(client, 0.0) - now)
        self._not_before[client] = now + delay + TOLERANCE * self.retry_after_s
        if len(self._not_before) >= self._sweep_at:
            self._not_before = {c: t for c, t in self._not_before.items() if t > now}
            self._sweep_at = len(self._not_before) + SWEEP_GROWTH
        return delay
