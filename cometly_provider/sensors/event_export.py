"""EventExportSensor: wait for a Cometly event export to complete and hand on its download details."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from cometly_provider.exceptions import (
    CometlyExportFailedError,
    CometlyExportSensorFailedError,
    CometlyExportSensorTimeout,
)
from cometly_provider.exports import (
    DEFAULT_POLL_INTERVAL,
    PollOutcome,
    check_export_id,
    check_seconds,
    describe,
    effective_poll_interval,
    poll_export,
    result_from_event,
)
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.triggers.event_export import EventExportTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

# Extra time the deferral timeout gives the trigger to report its own, clearer timeout event.
DEFER_TIMEOUT_GRACE_S = 60.0


class EventExportSensor(BaseSensorOperator):
    """
    Wait until a Cometly event export is ``completed``; return its download details.

    Returns (XCom) ``{"export_id", "status", "download_url", "expires_at", "completed_at"}``, ready for
    :class:`~cometly_provider.operators.download_export.DownloadEventExportOperator`. XCom is stored
    in the metadata DB and shown unmasked in the UI, so ``download_url`` is kept there *without*
    its signature (``https://.../export.ndjson.gz?<redacted>#cometly_export_id=42``): the download
    operator fetches a freshly signed URL from the export id, which also avoids the 15-minute
    expiry of the URL seen while polling. The signed URL is registered with the secret masker
    and only ever logged redacted.

    * ``failed`` → :class:`~cometly_provider.exceptions.CometlyExportSensorFailedError` (a
      ``CometlyExportFailedError`` and an ``AirflowFailException``: retrying would only poll the
      same failed export) with the API's message;
    * an unknown export (404) → :class:`~cometly_provider.exceptions.CometlyNotFoundError`;
    * ``queued`` / ``processing`` → keep waiting; so do transient failures (5xx, 429, network) that
      outlast the hook's retries, until ``timeout``;
    * timeout → :class:`~cometly_provider.exceptions.CometlyExportSensorTimeout` (an
      ``AirflowSensorTimeout``: no retries, ``soft_fail`` applies), in every mode.

    Polling shares the Space's 30/min status limit with every other task using the API key: the
    hook's limiter paces requests, and ``poke_interval`` is raised (with a warning) to the floor of
    one poller's fair rate, ``window / limit`` (2 s in production).

    :param export_id: the export to wait for; templated, normally ``create_export.output``. The
        create operator's result dict is accepted too.
    :param poke_interval: seconds between polls (default 30).
    :param timeout: seconds to wait overall (default 3600), across reschedules and deferral.
    :param mode: ``"poke"`` (hold the worker slot) or ``"reschedule"`` (free it between polls).
    :param deferrable: wait in the triggerer (:class:`EventExportTrigger`) instead; checks once
        before deferring. Default from ``[operators] default_deferrable``.
    :param cometly_conn_id: the Cometly connection.
    :param hook_params: extra keyword arguments for :class:`CometlyHook`.
    """

    template_fields: Sequence[str] = ("export_id",)
    ui_color = "#fff3d6"

    def __init__(
        self,
        *,
        export_id: Any,
        poke_interval: float | timedelta = DEFAULT_POLL_INTERVAL,
        timeout: float | timedelta = 3600,
        mode: str = "poke",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        cometly_conn_id: str = CometlyHook.default_conn_name,
        hook_params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Checked here, where DAG authors see it: none of these can come from a template.
        check_seconds(poke_interval, "poke_interval")
        check_seconds(timeout, "timeout", allow_zero=True)
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.export_id = export_id
        self.deferrable = deferrable
        self.cometly_conn_id = cometly_conn_id
        self.hook_params = dict(hook_params or {})
        self._hook: CometlyHook | None = None
        self._export_id: int | None = None
        self._last: PollOutcome | None = None

    def _prepare(self) -> tuple[CometlyHook, int]:
        export_id = check_export_id(self.export_id)
        hook = CometlyHook(self.cometly_conn_id, **self.hook_params)
        self.poke_interval = effective_poll_interval(
            self.poke_interval, hook.rate_limit_policy, self.log, field="poke_interval"
        )
        self._hook, self._export_id = hook, export_id
        return hook, export_id

    def execute(self, context: Context) -> Any:
        try:
            return self._execute(context)
        except CometlyExportFailedError as err:
            raise _final(err) from None

    def _execute(self, context: Context) -> Any:
        hook, export_id = self._prepare()
        if self.deferrable:
            outcome = poll_export(hook, export_id, self.log)
            if outcome.result is not None:
                self.log.info("Cometly %s", describe(outcome.result))
                return outcome.result
            self.log.info("Deferring until Cometly export %s completes (%s)", export_id, outcome.status)
            self.defer(
                trigger=EventExportTrigger(
                    export_id=export_id,
                    end_time=time.time() + self.timeout,
                    cometly_conn_id=self.cometly_conn_id,
                    poll_interval=self.poke_interval,
                    hook_params=self.hook_params,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout + max(DEFER_TIMEOUT_GRACE_S, 2 * self.poke_interval)),
            )
        try:
            return super().execute(context)
        except CometlyExportSensorTimeout:
            raise
        except AirflowSensorTimeout as err:
            raise CometlyExportSensorTimeout(
                f"Cometly export {export_id} did not complete within {self.timeout:g} s"
                + (f"; last status: {self._last.status}" if self._last and self._last.status else "")
                + (f"; last poll failed: {self._last.error}" if self._last and self._last.error else "")
            ) from err

    def poke(self, context: Context) -> bool | PokeReturnValue:
        hook, export_id = (
            (self._hook, self._export_id)
            if self._hook is not None and self._export_id is not None
            else self._prepare()
        )
        outcome = poll_export(hook, export_id, self.log)
        if outcome.result is None:
            self._last = PollOutcome(
                status=outcome.status or (self._last.status if self._last else None), error=outcome.error
            )
            return False
        self.log.info("Cometly %s", describe(outcome.result))
        return PokeReturnValue(is_done=True, xcom_value=outcome.result)

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Resume after :class:`EventExportTrigger`: its result, or the typed error it reported."""
        try:
            result = result_from_event(event, self.export_id, on_timeout=CometlyExportSensorTimeout)
        except CometlyExportFailedError as err:
            raise _final(err) from None
        self.log.info("Cometly %s", describe(result))
        return result


def _final(err: CometlyExportFailedError) -> CometlyExportSensorFailedError:
    """The same failure, but not retried by Airflow: a retry would poll the same failed export."""
    if isinstance(err, CometlyExportSensorFailedError):
        return err
    return CometlyExportSensorFailedError(str(err), status_code=err.status_code, api_message=err.api_message)
