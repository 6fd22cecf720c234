"""ExportTrigger: wait for a Cometly export (any kind) in the triggerer, without a worker slot."""

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
    ExportRef,
    PollOutcome,
    apoll_export,
    error_event,
    poll_interval_floor,
    success_event,
    timeout_event,
    timeout_message,
)
from cometly_provider.hooks.cometly import CometlyHook

#: Seconds the first poll of a trigger started after its deadline may take.
LATE_POLL_BOUND_S = 1.0


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


class ExportTrigger(BaseTrigger):
    """
    Poll an export's status asynchronously until it is completed, failed, or time runs out.

    Fires exactly one event:

    * ``{"status": "success", "export": {export_id, kind, status, download_url, expires_at, completed_at}}``;
    * ``{"status": "error", "export_id", "kind", "error_type", "message", ...}`` for a failed export
      (with the API's message), a 404, a rejected key or any other error no later poll can fix;
    * ``{"status": "timeout", "export_id", "kind", "message", "last_status"}`` at ``end_time``.

    Transient failures (5xx, 429, connection problems) that outlast the hook's own retries do not
    end the wait: they are logged and polling goes on while time remains, because a short outage
    should not fail an export that may still complete; the timeout event then names the last error.

    **The deadline is hard.** Each poll gets the time left as a bound (the hook's
    ``aget_export(deadline=...)`` covers the rate-limiter queue, retries and the request), so the
    timeout event fires at ``end_time`` even when many exports share a Space's 30/min status limit
    and polls queue behind each other. Firing later would let the task's own deferral timeout win,
    losing ``soft_fail`` and the typed timeout.

    The deadline is wall-clock epoch seconds (``time.time()``): the trigger may be serialized and
    resumed by another triggerer process or host, where a monotonic clock means nothing.

    :param export_id: the export to wait for.
    :param end_time: wall-clock deadline, epoch seconds (``time.time() + timeout``).
    :param kind: ``"events"`` (default) or ``"contacts"``.
    :param cometly_conn_id: the Cometly connection.
    :param poll_interval: seconds between polls (raised to the rate-limit floor if smaller).
    :param hook_params: extra keyword arguments for :class:`CometlyHook`.
    """

    def __init__(
        self,
        export_id: int,
        end_time: float,
        cometly_conn_id: str = CometlyHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        hook_params: Mapping[str, Any] | None = None,
        kind: str = "events",
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ref = ExportRef.of(kind, export_id)
        self.export_id = self.ref.export_id
        self.kind = self.ref.kind.name
        self.end_time = float(end_time)
        self.cometly_conn_id = cometly_conn_id
        self.poll_interval = float(poll_interval)
        self.hook_params = dict(hook_params or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "export_id": self.export_id,
                "kind": self.kind,
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
        ref = self.ref
        interval: float | None = None
        last: PollOutcome | None = None
        # Resumed after its deadline (a triggerer restart): one short poll may still find it done.
        now = time.time()
        bound = self.end_time if self.end_time > now else now + LATE_POLL_BOUND_S
        while True:
            try:
                outcome = await apoll_export(hook, ref, self.log, deadline=bound)
                bound = self.end_time
                if interval is None and "connection" in hook.__dict__:
                    # Known once the first poll loaded the connection (no I/O here).
                    interval = max(self.poll_interval, poll_interval_floor(hook.rate_limit_policy, ref.kind))
            except CometlyError as err:
                self.log.error("%s: %s", ref.label, err)
                yield _event(error_event(ref, err))
                return
            except Exception as err:  # a bug or an API contract change: report it, do not hang
                self.log.exception("%s: unexpected error while polling", ref.label)
                yield _event(error_event(ref, CometlyError(f"{type(err).__name__}: {err}")))
                return
            if outcome.result is not None:
                self.log.info("%s completed", ref.label)
                yield _event(success_event(outcome.result))
                return
            last = outcome.after(last)

            remaining = self.end_time - time.time()
            if remaining <= 0:
                deadline = dt.datetime.fromtimestamp(self.end_time, dt.UTC).isoformat(timespec="seconds")
                message = timeout_message(ref, f"before its deadline ({deadline})", last)
                self.log.warning("%s", message)
                yield _event(timeout_event(ref, message, last))
                return
            await asyncio.sleep(min(interval or self.poll_interval, remaining))


#: 0.1.0 name; triggers serialized by 0.1.0 name this class path and still load.
EventExportTrigger = ExportTrigger
