"""CreateExportOperator: start a Cometly export of any kind, optionally wait for it.

:class:`~cometly_provider.operators.event_export.CreateEventExportOperator` and
:class:`~cometly_provider.operators.contact_export.CreateContactExportOperator` are this operator
with their kind's parameters as named, templated arguments. A kind without its own operator is
usable here directly: ``CreateExportOperator(kind="...", export_params={...})``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, TaskDeferred, conf

from cometly_provider.checks import check_bool, check_seconds
from cometly_provider.days import check_period_over, last_complete_day
from cometly_provider.exceptions import (
    CometlyExportFailedError,
    CometlyExportTimeoutError,
    CometlyInputError,
    CometlyNotFoundError,
)
from cometly_provider.export_kinds import ExportKind, export_kind
from cometly_provider.exports import (
    DEFAULT_POLL_INTERVAL,
    TRANSIENT_ERRORS,
    ExportRef,
    ExportStatus,
    PollOutcome,
    defer_until_complete,
    describe,
    effective_poll_interval,
    poll_export,
    result_from_event,
    timeout_message,
)
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.pending import PendingExport, fingerprint

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


class CreateExportOperator(BaseOperator):
    """
    Create a Cometly export (``POST /<kind>/exports``); optionally wait for it.

    Returns (XCom) ``{"export_id", "kind"}``-compatible output: the ``export_id``; with
    ``wait_for_completion=True`` it waits like :class:`~cometly_provider.sensors.event_export.ExportSensor`
    (in the triggerer when ``deferrable=True``) and returns the completed export's ``{"export_id",
    "kind", "status", "download_url", "expires_at", "completed_at"}`` instead (``download_url``
    without its signature). The ``export_id`` is also pushed under the XCom key ``export_id`` as
    soon as the export exists, before any waiting, and, when the export covers exactly one day
    (the default), that day under the key ``day`` (``YYYY-MM-DD``), for object keys.

    **The right period by default.** Left unset, the period is the last complete day in the
    Space's timezone (connection extra ``timezone``, default UTC) before the run's
    ``data_interval_end``: yesterday for a daily run under ``CronTriggerTimetable``, the run's
    interval under ``CronDataIntervalTimetable``, the day before a manual run. A period that is not
    over yet (a future day, today) fails before any request.

    Every rule of the API reference is checked after templates render and before any request: a bad
    value fails the task at once with a :class:`~cometly_provider.exceptions.CometlyInputError`
    naming the field, the value and what is allowed.

    **Rate limit.** Creation is limited to 5 per minute per Space. Mapped instances are paced by the
    hook's limiter (one per task process, fed by ``X-RateLimit-Remaining`` across processes; one for
    the deployment with the Redis backend). A 429 is a wait, not a failed attempt: it is waited out
    for up to the connection's ``rate_limit_timeout``; creation also retries 5xx at least 15 times
    with waits of up to one window (the hook's ``create_export(patient=True)``).

    **No duplicate export on retry** (``wait_for_completion=True``): the export is recorded for the
    task instance right after creation (Airflow 3.3's task state store, a Variable before 3.3; see
    :mod:`cometly_provider.pending`). A later try whose request is unchanged re-attaches to it if it
    still exists and has not failed, instead of spending another creation. The record is removed
    whatever ends the last try. ``reuse_export_on_retry=False`` always creates a new export.

    :param kind: the export kind (``"events"``, ``"contacts"``).
    :param export_params: the API parameters; templated. The period parameters may be left out.
    :param wait_for_completion: wait for the export and return its result dict.
    :param poll_interval: seconds between status polls while waiting (default 30; raised to the
        rate-limit floor, 2 s in production, with a warning).
    :param timeout: seconds to wait for completion (default 3600); then
        :class:`~cometly_provider.exceptions.CometlyExportTimeoutError` (retryable: a retry re-attaches
        to the export and waits again).
    :param deferrable: wait in the triggerer instead of a worker slot. Default from
        ``[operators] default_deferrable``.
    :param reuse_export_on_retry: see above (default ``True``).
    :param cometly_conn_id: the Cometly connection.
    :param hook_params: extra keyword arguments for :class:`CometlyHook`.
    """

    template_fields: Sequence[str] = ("export_params",)
    ui_color = "#fde9d9"

    def __init__(
        self,
        *,
        kind: str = "events",
        export_params: Mapping[str, Any] | None = None,
        wait_for_completion: bool = False,
        poll_interval: float | timedelta = DEFAULT_POLL_INTERVAL,
        timeout: float | timedelta = 3600,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        reuse_export_on_retry: bool = True,
        cometly_conn_id: str = CometlyHook.default_conn_name,
        hook_params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kind = export_kind(kind).name
        self.export_params = export_params
        self.wait_for_completion = check_bool(wait_for_completion, "wait_for_completion")
        self.poll_interval = check_seconds(poll_interval, "poll_interval")
        self.timeout = check_seconds(timeout, "timeout", allow_zero=True)
        self.deferrable = check_bool(deferrable, "deferrable")
        self.reuse_export_on_retry = check_bool(reuse_export_on_retry, "reuse_export_on_retry")
        self.cometly_conn_id = cometly_conn_id
        self.hook_params = dict(hook_params or {})

    # --- input -----------------------------------------------------------------------------------

    @property
    def export_kind(self) -> ExportKind:
        return export_kind(self.kind)

    def rendered_params(self, tz: dt.tzinfo) -> dict[str, Any]:
        """The API parameters as given (after rendering); ``None`` means "not given"."""
        params = self.export_params
        if params is None:
            return {}
        if not isinstance(params, Mapping):
            raise CometlyInputError(
                f"export_params={params!r} is invalid: expected a dict of {self.export_kind.noun} "
                f"parameters ({', '.join(self.export_kind.params)})",
                field="export_params",
            )
        return {str(k): v for k, v in params.items() if v is not None}

    def request_body(self, context: Context, hook: CometlyHook) -> dict[str, Any]:
        """The validated request body, with the default period filled in; raises before any request."""
        kind = self.export_kind
        tz = hook.space_timezone
        params = self.rendered_params(tz)
        defaults = kind.day_params(last_complete_day(context, tz))
        if not any(name in params for name in defaults):
            params.update(defaults)
        body = kind.validate(params)
        check_period_over(kind, body, tz)
        return body

    # --- execution -------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        kind = self.export_kind
        hook = CometlyHook(self.cometly_conn_id, **self.hook_params)
        body = self.request_body(context, hook)  # before any request
        ti = context["ti"]
        pending = None
        if self.wait_for_completion and self.reuse_export_on_retry:
            pending = PendingExport(context, fingerprint(hook.space, kind.name, body), self.log)

        ref = self._reusable_export(hook, pending) if pending and ti.try_number > 1 else None
        if ref is None:
            ref = self._create(hook, body)
            if pending is not None:
                pending.save(ref)
        # Before any waiting: visible while this try waits or defers.
        ti.xcom_push(key="export_id", value=ref.export_id)
        day = _whole_day(kind, body)
        if day is not None:  # for object keys: "dt={{ ti.xcom_pull(task_ids='...', key='day') }}"
            ti.xcom_push(key="day", value=day)
        if not self.wait_for_completion:
            return ref.export_id

        try:
            interval = effective_poll_interval(
                self.poll_interval, hook.rate_limit_policy, self.log, kind=kind
            )
            outcome = poll_export(hook, ref, self.log)  # already completed: no deferral needed
            if outcome.result is None and self.deferrable:
                defer_until_complete(
                    self,
                    ref,
                    timeout=self.timeout,
                    poll_interval=interval,
                    cometly_conn_id=self.cometly_conn_id,
                    hook_params=self.hook_params,
                )
            result = outcome.result or self._wait(hook, ref, interval, outcome)
        except BaseException as err:  # execution_timeout is a BaseException, and it ends tries too
            if pending is not None and not _is_deferral(err):
                pending.after_failure(err)
            raise
        if pending is not None:
            pending.clear()
        self.log.info("Cometly %s", describe(result))
        return result

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: its result, or the typed error it reported."""
        ref = ExportRef.parse(event, kind=self.kind, field="event") if _names_export(event) else None
        result = result_from_event(event, ref, on_timeout=CometlyExportTimeoutError)
        self.log.info("Cometly %s", describe(result))
        return result

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Every ending after a deferral passes here: ``execute_complete``'s result or error, and the
        deferral timeout or trigger failure Airflow raises without calling it. The pending record is
        settled on each of them."""
        pending = PendingExport(context, None, self.log) if self.reuse_export_on_retry else None
        try:
            result = super().resume_execution(next_method, next_kwargs, context)
        except BaseException as err:
            if pending is not None and not _is_deferral(err):
                pending.after_failure(err)
            raise
        if pending is not None:
            pending.clear()
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (when its provider is installed): the export reads the Space's data of its kind."""
        from cometly_provider.lineage import export_lineage

        return export_lineage(CometlyHook(self.cometly_conn_id, **self.hook_params), kind=self.kind)

    def _create(self, hook: CometlyHook, body: Mapping[str, Any]) -> ExportRef:
        kind = self.export_kind
        response = hook.create_export(kind, patient=True, **body)
        try:
            ref = ExportRef.of(kind, response["export_id"])
        except (KeyError, TypeError, CometlyInputError):
            raise CometlyExportFailedError(
                f"Cometly create {kind.noun} answered without an export_id: {response!r}"
            ) from None
        self.log.info("Created %s for %s (%s)", ref.label, _period(body), response.get("status"))
        return ref

    def _reusable_export(self, hook: CometlyHook, pending: PendingExport) -> ExportRef | None:
        """The export a previous try of this task instance created, if it is still worth waiting for."""
        record = pending.load()
        if record is None:
            return None
        ref = ExportRef.of(self.export_kind, record["export_id"])
        try:
            status = ExportStatus.parse(hook.get_export(ref.kind, ref.export_id).get("status"), ref)
        except CometlyNotFoundError:
            self.log.warning(
                "%s of try %s no longer exists; creating a new one", ref.label, record.get("try_number")
            )
            return None
        except TRANSIENT_ERRORS as err:
            # Still the best bet: the wait tolerates transient errors until its timeout.
            self.log.warning("Cannot check %s (%s); reusing it anyway", ref.label, err)
            return ref
        if status is ExportStatus.FAILED:
            self.log.warning("%s of a previous try failed; creating a new one", ref.label)
            return None
        self.log.info(
            "Re-attaching to %s (%s) created by try %s of this task instance instead of creating another",
            ref.label,
            status.value,
            record.get("try_number"),
        )
        return ref

    def _wait(self, hook: CometlyHook, ref: ExportRef, interval: float, last: PollOutcome) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout  # in-process wait: a monotonic clock is right here
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CometlyExportTimeoutError(timeout_message(ref, f"within {self.timeout:g} s", last))
            time.sleep(min(interval, remaining))
            outcome = poll_export(hook, ref, self.log)
            if outcome.result is not None:
                return outcome.result
            last = outcome.after(last)


def _is_deferral(err: BaseException) -> bool:
    """``TaskDeferred`` ends the try but not the task instance's interest in the export."""
    return isinstance(err, TaskDeferred)


def _names_export(event: object) -> bool:
    return isinstance(event, Mapping) and event.get("export_id") is not None


def _whole_day(kind: ExportKind, body: Mapping[str, Any]) -> str | None:
    """The day (``YYYY-MM-DD``) the request covers when it is exactly one whole Space day."""
    for value in body.values():
        try:
            day = dt.date.fromisoformat(str(value)[:10])
        except ValueError:
            return None
        covered = kind.day_params(day)
        return day.isoformat() if all(body.get(k) == v for k, v in covered.items()) else None
    return None


def _period(body: Mapping[str, Any]) -> str:
    if "date" in body:
        return str(body["date"])
    return f"{body.get('start_date')} .. {body.get('end_date')}"
