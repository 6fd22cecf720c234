"""Failed events: streamed to ``failed_events_path`` as NDJSON, or kept (capped) for the XCom result.

The file always describes the **last try only**: it is opened at the first failure (so a try in
which nothing failed creates nothing) and, when that try ends with no failure, a file left by an
earlier try is deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cometly_provider.exceptions import CometlyError
    from cometly_provider.utils.storage import ObjectWriter

#: Entries of the ``invalid`` / ``failed_events`` lists kept in the XCom result.
INLINE_LIMIT = 100


@dataclass
class Item:
    """One valid event, ready to send (its ``idempotency_key`` set)."""

    position: int
    payload: dict[str, Any]


class FailureSink:
    logged_limit = 20

    def __init__(self, writer: ObjectWriter | None, label: str, log: Any) -> None:
        self.writer = writer
        self.label = label
        self.log = log
        self.inline: list[dict[str, Any]] = []
        self.count = 0
        self._open = False

    def add(self, item: Item, error: CometlyError) -> None:
        self.count += 1
        entry = {
            self.label: item.position,
            "status": error.status_code,
            "error": type(error).__name__,
            "reason": str(error),
            "event": item.payload,
        }
        if self.count <= self.logged_limit:
            self.log.warning("Event at %s %d failed: %s", self.label, item.position, error)
        elif self.count == self.logged_limit + 1:
            self.log.warning("More events failed; further failures are counted but not logged one by one")
        if self.writer is not None:
            if not self._open:
                self.writer.begin()
                self._open = True
            line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
            self.writer.write(line.encode())
        elif len(self.inline) < INLINE_LIMIT:
            self.inline.append(entry)

    def finish(self) -> str | None:
        """Make the destination show this try's failures; its URI if it holds any, else ``None``."""
        writer = self.writer
        if writer is None:
            return None
        if self._open:
            self._open = False
            try:
                writer.commit()
            except BaseException:
                writer.abort()  # no half-written object, nor a multipart upload left behind
                raise
            return writer.uri
        if writer.remove():
            self.log.info("Removed %s: it listed an earlier try's failures, and none failed now", writer.uri)
        return None

    def abort(self) -> None:
        """Throw away what this try wrote (the destination keeps its previous state)."""
        if self._open and self.writer is not None:
            self._open = False
            self.writer.abort()
