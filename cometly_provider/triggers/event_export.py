"""EventExportTrigger: wait for a Cometly event export in the triggerer, without a worker slot."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from cometly_provider.exceptions import CometlyError
from cometly_provider.exports import (
    DEFAULT_POLL_INTERVAL,
    PollOutcome,
    apoll_export,
    error_event,
    poll_interval_floor,
    success_event,
    timeout_event,
    timeout_message,
)
from cometly_provider.hooks.cometly import CometlyHook


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


class EventExportTrigger(BaseTrigger):
    """
    Poll Get Event Export asynchronously until the export is completed, failed, or time runs out.

    Fires exactly one event:

    * ``{"status": "success", "export": {export_id, status, download_url, expires_at, completed_at}}``;
    * ``{"status": "error", "export_id", "error_type", "message", ...}`` for a failed export (with the
      API's message), a 404, a rejected key or any other error no later poll can fix;
    * ``{"status": "timeout", "export_id", "message", "last_status"}`` once ``end_time`` has passed.

    Transient failures (5xx, 429, connection problems) that outlast the hook's own retries do not
    end the wait: they are logged and polling goes on while time remains, because a short outage
    should not fail an export that may still complete; the timeout event then names the last error.

    The deadline is wall-clock epoch seconds (``time.time()``): the trigger may be serialized and
    resumed by another triggerer process or host, where a monotonic clock means nothing.

    :param export_id: the export to wait for.
    :param cometly_conn_id: the Cometly connection.
    :param poll_interval: seconds between polls (raised to the rate-limit floor if smaller).
    :param end_time: wall-clock deadline, epoch seconds (``time.time() + timeout``).
    :param hook_params: extra keyword arguments for :class:`CometlyHook`.
    """

    def __init__(
        self,
        export_id: int,
        end_time: float,
        cometly_conn_id: str = CometlyHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        hook_params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.export_id = int(export_id)
        self.end_time = float(end_time)
        self.cometly_conn_id = cometly_conn_id
        self.poll_interval = float(poll_interval)
        self.hook_params = dict(hook_params or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "export_id": self.export_id,
                "end_time": self.end_time,
                "cometly_conn_id": self.cometly_conn_id,
                "poll_interval": self.poll_interval,
                "hook_params": self.hook_params,
            },
        )

    def _hook(self) -> CometlyHook:
        return CometlyHook(self.cometly_conn_id, **self.hook_params)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        interval: float | None = None
        last: PollOutcome | None = None
        while True:
            try:
                outcome = await apoll_export(hook, self.export_id, self.log, deadline=self.end_time)
                if interval is None:
                    # Known once the first poll loaded the connection (no I/O here).
                    interval = max(self.poll_interval, poll_interval_floor(hook.rate_limit_policy))
            except CometlyError as err:
                self.log.error("Cometly export %s: %s", self.export_id, err)
                yield _event(error_event(self.export_id, err))
                return
            except Exception as err:  # a bug or an API contract change: report it, do not hang
                self.log.exception("Cometly export %s: unexpected error while polling", self.export_id)
                yield _event(error_event(self.export_id, CometlyError(f"{type(err).__name__}: {err}")))
                return
            if outcome.result is not None:
                self.log.info("Cometly export %s completed", self.export_id)
                yield _event(success_event(outcome.result))
                return
            last = PollOutcome(status=outcome.status or (last.status if last else None), error=outcome.error)

            remaining = self.end_time - time.time()
            if remaining <= 0:
                deadline = dt.datetime.fromtimestamp(self.end_time, dt.UTC).isoformat(timespec="seconds")
                message = timeout_message(self.export_id, f"before its deadline ({deadline})", last)
                self.log.warning("%s", message)
                yield _event(timeout_event(self.export_id, message, last))
                return
            await asyncio.sleep(min(interval, remaining))
