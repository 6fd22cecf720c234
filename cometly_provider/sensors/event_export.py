"""ExportSensor: wait for a Cometly export (events or contacts) to complete and hand on the export."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from cometly_provider.checks import check_seconds
from cometly_provider.exceptions import (
    CometlyExportFailedError,
    CometlyExportSensorFailedError,
    CometlyExportSensorTimeout,
)
from cometly_provider.export_kinds import export_kind
from cometly_provider.exports import (
    DEFAULT_POLL_INTERVAL,
    ExportRef,
    PollOutcome,
    defer_until_complete,
    describe,
    effective_poll_interval,
    poll_export,
    result_from_event,
    timeout_message,
)
from cometly_provider.hooks.cometly import CometlyHook

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


class ExportSensor(BaseSensorOperator):
    """
    Wait until a Cometly export (``kind="events"`` or ``"contacts"``) is ``completed``.

    Returns (XCom) ``{"export_id", "kind", "status", "download_url", "expires_at", "completed_at"}``,
    ready for :class:`~cometly_provider.operators.download_export.DownloadExportOperator`, which
    takes this result as its ``export`` and asks the API for a freshly signed URL itself. XCom is
    stored in the metadata DB and shown unmasked in the UI, so ``download_url`` is kept there
    *without* its signature (``https://.../export.ndjson.gz?<redacted>#cometly_export_id=42&...``).

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
        create operator's result dict is accepted too (its ``kind`` then applies).
    :param kind: ``"events"`` or ``"contacts"``; default: what ``export_id`` says (a result dict
        carries its kind), else events.
    :param poke_interval: seconds between polls (default 30).
    :param timeout: seconds to wait overall (default 3600), across reschedules and deferral.
    :param mode: ``"poke"`` (hold the worker slot) or ``"reschedule"`` (free it between polls).
    :param deferrable: wait in the triggerer (:class:`~cometly_provider.triggers.event_export.ExportTrigger`)
        instead; checks once before deferring. Default from ``[operators] default_deferrable``.
    :param cometly_conn_id: the Cometly connection.
    :param hook_params: extra keyword arguments for :class:`CometlyHook`.
    """

    template_fields: Sequence[str] = ("export_id",)
    ui_color = "#fff3d6"

    def __init__(
        self,
        *,
        export_id: Any,
        kind: str | None = None,
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
        if kind is not None:
            export_kind(kind)
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.export_id = export_id
        self.kind = kind
        self.deferrable = deferrable
        self.cometly_conn_id = cometly_conn_id
        self.hook_params = dict(hook_params or {})
        self._hook: CometlyHook | None = None
        self._ref: ExportRef | None = None
        self._last: PollOutcome | None = None

    def _prepare(self) -> tuple[CometlyHook, ExportRef]:
        if self._hook is not None and self._ref is not None:
            return self._hook, self._ref
        ref = ExportRef.parse(self.export_id, kind=self.kind, field="export_id")
        hook = CometlyHook(self.cometly_conn_id, **self.hook_params)
        self.poke_interval = effective_poll_interval(
            self.poke_interval, hook.rate_limit_policy, self.log, kind=ref.kind, field="poke_interval"
        )
        self._hook, self._ref = hook, ref
        return hook, ref

    def execute(self, context: Context) -> Any:
        try:
            return self._execute(context)
        except CometlyExportFailedError as err:
            raise _final(err) from None

    def _execute(self, context: Context) -> Any:
        hook, ref = self._prepare()
        if self.deferrable:
            outcome = poll_export(hook, ref, self.log)
            if outcome.result is not None:
                self.log.info("Cometly %s", describe(outcome.result))
                return outcome.result
            defer_until_complete(
                self,
                ref,
                timeout=self.timeout,
                poll_interval=self.poke_interval,
                cometly_conn_id=self.cometly_conn_id,
                hook_params=self.hook_params,
            )
        try:
            return super().execute(context)
        except CometlyExportSensorTimeout:
            raise
        except AirflowSensorTimeout as err:
            raise CometlyExportSensorTimeout(
                timeout_message(ref, f"within {self.timeout:g} s", self._last)
            ) from err

    def poke(self, context: Context) -> bool | PokeReturnValue:
        hook, ref = self._prepare()
        outcome = poll_export(hook, ref, self.log)
        if outcome.result is None:
            self._last = outcome.after(self._last)
            return False
        self.log.info("Cometly %s", describe(outcome.result))
        return PokeReturnValue(is_done=True, xcom_value=outcome.result)

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: its result, or the typed error it reported."""
        try:
            ref = ExportRef.parse(self.export_id, kind=self.kind, field="export_id")
            result = result_from_event(event, ref, on_timeout=CometlyExportSensorTimeout)
        except CometlyExportFailedError as err:
            raise _final(err) from None
        self.log.info("Cometly %s", describe(result))
        return result


#: 0.1.0 name: the same sensor (``kind`` defaults to events).
EventExportSensor = ExportSensor


def _final(err: CometlyExportFailedError) -> CometlyExportSensorFailedError:
    """The same failure, but not retried by Airflow: a retry would poll the same failed export."""
    if isinstance(err, CometlyExportSensorFailedError):
        return err
    return CometlyExportSensorFailedError(str(err), status_code=err.status_code, api_message=err.api_message)
