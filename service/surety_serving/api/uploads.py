"""A bound on request bytes buffered at once, across every upload in progress.

Each body is buffered whole before it is decoded, so sixteen 8 MiB uploads held open by slow
clients would hold 128 MiB; past the budget a request is answered 503 + Retry-After instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from surety_serving.errors import ServerBusyError


class UploadBudget:
    """Bytes of request bodies held now, against a limit (one per server process)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def hold(self) -> Iterator[UploadHold]:
        """A hold for one request's body; its bytes are returned when the block ends."""
        hold = UploadHold(self)
        try:
            yield hold
        finally:
            self.held -= hold.size


class UploadHold:
    """The bytes one request holds of the budget."""

    def __init__(self, budget: UploadBudget) -> None:
        self._budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all (more than now); ServerBusyError if they do not fit."""
        extra = size - self.size
        if extra <= 0:
            return
        budget = self._budget
        if budget.held + extra > budget.limit:
            raise ServerBusyError(
                f"the server holds {budget.held} bytes of uploads, its {budget.limit}-byte "
                "limit leaves no room for this body; retry later"
            )
        budget.held += extra
        self.size = size
