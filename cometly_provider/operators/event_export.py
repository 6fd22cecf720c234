"""CreateEventExportOperator: start a Cometly event export for one day, optionally wait for it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    BaseOperator,
    Variable,
    conf,
)

from cometly_provider.exceptions import (
    CometlyExportFailedError,
    CometlyExportTimeoutError,
    CometlyInputError,
    CometlyNotFoundError,
)
from cometly_provider.exports import (
    DEFAULT_POLL_INTERVAL,
    TRANSIENT_ERRORS,
    EventExportStatus,
    PollOutcome,
    check_seconds,
    describe,
    effective_poll_interval,
    poll_export,
    result_from_event,
    timeout_message,
)
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.triggers.event_export import EventExportTrigger
from cometly_provider.utils.rendered import parse_rendered_literal
from cometly_provider.validation import EXPORT_PARAMS, validate_export_params

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: Variables remembering an in-flight export are named with this prefix.
PENDING_EXPORT_VARIABLE_PREFIX = "cometly_pending_export__"
# Extra time the deferral timeout gives the trigger to report its own, clearer timeout event.
DEFER_TIMEOUT_GRACE_S = 60.0
_LIST_PARAMS = ("event_names", "sources", "fields")
_OPTIONAL_PARAMS = (
    "query_mode",
    "event_names",
    "sources",
    "attribution_model",
    "attribution_window",
    "fields",
)


class CreateEventExportOperator(BaseOperator):
    """
    Create a Cometly event export of one day (POST /events/exports); optionally wait for it.

    Returns (XCom) the ``export_id``; with ``wait_for_completion=True`` it waits like
    :class:`~cometly_provider.sensors.event_export.EventExportSensor` (in the triggerer when
    ``deferrable=True``) and returns the completed export's ``{"export_id", "status", "download_url",
    "expires_at", "completed_at"}`` instead. The ``export_id`` is also pushed under the XCom key
    ``export_id`` as soon as the export exists, before any waiting.

    Every rule of the API reference is checked after templates render and before any request
    (:func:`~cometly_provider.validation.validate_export_params`): a bad value fails the task at once
    with a :class:`~cometly_provider.exceptions.CometlyInputError` naming the field, the value and what
    is allowed, e.g. ``attribution_model is required when sources is given``.

    **Rate limit.** Creation is limited to 5 per minute per Space. Mapped instances (a backfill with
    ``.expand(date=[...])``) are paced by the hook's limiter (one per task process, fed by
    ``X-RateLimit-Remaining`` across processes; one for the deployment with the Redis backend); a
    429 is waited out (it does not use up attempts) after its ``Retry-After``. For creation the
    operator raises the hook's retry policy to at least :attr:`create_max_attempts` attempts and a
    wait cap of at least one rate-limit window.

    **No duplicate export on retry** (``wait_for_completion=True``). Airflow 3 deletes every XCom of
    a task instance when a new try starts, so the ``export_id`` XCom cannot tell a retry what the
    failed try created. Instead the operator records the export in an Airflow Variable named
    ``cometly_pending_export__<digest of dag_id, run_id, task_id, map_index>`` right after creating
    it (value: the export id, a digest of the Space and request body, and the task instance it
    belongs to). A later try of the same task instance whose request is unchanged reuses that export
    if it still exists and has not failed, and waits for it again (with a fresh ``timeout``),
    instead of spending another creation on the same day. The Variable is deleted when the task
    succeeds, when the export failed, and when the task fails for good (no retries left, or an
    error retries cannot fix); only a worker killed on the last try leaves one behind (it holds no
    secret; a later clear of that task instance reuses or overwrites it). Why a Variable: it lives
    in the metadata DB that every worker reaches through the Task SDK, survives the per-try XCom
    clean-up, needs no extra table, and is visible to admins. Without waiting, the task returns
    right after creation, so nothing is recorded. ``reuse_export_on_retry=False`` always creates a
    new export. Reading or writing the Variable is best effort: if it fails, the worst case is one
    more export.

    :param date: the day to export (``YYYY-MM-DD``, a date or a datetime); templated, default the
        run's logical date ``{{ ds }}``. One day per export.
    :param query_mode: ``profile`` (default on the API side) or ``company``; templated.
    :param event_names: up to 10 event names to keep; templated.
    :param sources: up to 15 traffic sources; needs ``attribution_model`` and
        ``attribution_window``; templated.
    :param attribution_model: e.g. ``last_touch``; templated.
    :param attribution_window: days: 0 (LTV), 1, 7, 14, 30, 60 or 90; templated.
    :param fields: up to 20 fields of the file (``id`` and ``event_time_utc`` are always included;
        ad hierarchy fields need ``sources``); templated.
    :param wait_for_completion: wait for the export and return its result dict.
    :param poll_interval: seconds between status polls while waiting (default 30; raised to the
        rate-limit floor, 2 s in production, with a warning).
    :param timeout: seconds to wait for completion (default 3600); then
        :class:`~cometly_provider.exceptions.CometlyExportTimeoutError` (retryable: a retry reuses
        the export and waits again).
    :param deferrable: wait in the triggerer instead of a worker slot. Default from
        ``[operators] default_deferrable``.
    :param reuse_export_on_retry: see above (default ``True``).
    :param cometly_conn_id: the Cometly connection.
    :param hook_params: extra keyword arguments for :class:`CometlyHook`.
    """

    template_fields: Sequence[str] = EXPORT_PARAMS  # every API parameter, nothing else
    ui_color = "#fde9d9"
    #: Lower bound on attempts per export creation (each 429 waits out its ``Retry-After``).
    create_max_attempts: int = 15

    def __init__(
        self,
        *,
        date: Any = "{{ ds }}",
        query_mode: str | None = None,
        event_names: Sequence[str] | str | None = None,
        sources: Sequence[str] | str | None = None,
        attribution_model: str | None = None,
        attribution_window: int | str | None = None,
        fields: Sequence[str] | str | None = None,
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
        self.date = date
        self.query_mode = query_mode
        self.event_names = event_names
        self.sources = sources
        self.attribution_model = attribution_model
        self.attribution_window = attribution_window
        self.fields = fields
        self.wait_for_completion = wait_for_completion
        self.poll_interval = check_seconds(poll_interval, "poll_interval")
        self.timeout = check_seconds(timeout, "timeout", allow_zero=True)
        self.deferrable = deferrable
        self.reuse_export_on_retry = reuse_export_on_retry
        self.cometly_conn_id = cometly_conn_id
        self.hook_params = dict(hook_params or {})
        for name in ("wait_for_completion", "deferrable", "reuse_export_on_retry"):
            if not isinstance(getattr(self, name), bool):
                raise CometlyInputError(
                    f"{name}={getattr(self, name)!r} is invalid: expected True or False", field=name
                )

    # --- input -----------------------------------------------------------------------------------

    def export_params(self) -> dict[str, Any]:
        """The rendered parameters, with what text-rendered templates turn values into undone."""
        params: dict[str, Any] = {"date": self.date}
        for name in _OPTIONAL_PARAMS:
            params[name] = _untemplated(name, getattr(self, name))
        if params["date"] is None or (isinstance(params["date"], str) and not params["date"].strip()):
            raise CometlyInputError(
                f"date={params['date']!r} is invalid: use one day as YYYY-MM-DD; the default "
                "'{{ ds }}' renders empty for a DAG run without a logical date, so pass date explicitly",
                field="date",
            )
        return params

    # --- execution -------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        body = validate_export_params(self.export_params())  # before any request
        hook = CometlyHook(self.cometly_conn_id, **self.hook_params)
        ti = context["ti"]
        pending = None
        if self.wait_for_completion and self.reuse_export_on_retry:
            pending = _PendingExport(ti, _fingerprint(hook.space, body), self.log)

        export_id = self._reusable_export(hook, pending) if pending and ti.try_number > 1 else None
        if export_id is None:
            export_id = self._create(hook, body)
            if pending is not None:
                pending.save(export_id)
        # Before any waiting: visible while this try waits or defers.
        ti.xcom_push(key="export_id", value=export_id)
        if not self.wait_for_completion:
            return export_id

        try:
            interval = effective_poll_interval(self.poll_interval, hook.rate_limit_policy, self.log)
            outcome = poll_export(hook, export_id, self.log)  # already completed: no deferral needed
            if outcome.result is None and self.deferrable:
                self.log.info("Deferring until Cometly export %s completes", export_id)
                self.defer(
                    trigger=EventExportTrigger(
                        export_id=export_id,
                        end_time=time.time() + self.timeout,
                        cometly_conn_id=self.cometly_conn_id,
                        poll_interval=interval,
                        hook_params=self.hook_params,
                    ),
                    method_name="execute_complete",
                    timeout=timedelta(seconds=self.timeout + max(DEFER_TIMEOUT_GRACE_S, 2 * interval)),
                )
            result = outcome.result or self._wait(hook, export_id, interval, outcome)
        except Exception as err:
            _after_failure(pending, ti, err)
            raise
        if pending is not None:
            pending.clear()
        self.log.info("Cometly %s", describe(result))
        return result

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Resume after :class:`EventExportTrigger`: its result, or the typed error it reported."""
        ti = context["ti"]
        pending = _PendingExport(ti, None, self.log) if self.reuse_export_on_retry else None
        try:
            export_id = event.get("export_id") if isinstance(event, Mapping) else None
            result = result_from_event(event, export_id, on_timeout=CometlyExportTimeoutError)
        except Exception as err:
            _after_failure(pending, ti, err)
            raise
        if pending is not None:
            pending.clear()
        self.log.info("Cometly %s", describe(result))
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (when its provider is installed): the export reads the Space's Cometly events."""
        from cometly_provider.lineage import export_lineage

        return export_lineage(CometlyHook(self.cometly_conn_id, **self.hook_params))

    def _create(self, hook: CometlyHook, body: Mapping[str, Any]) -> int:
        response = self._creation_hook(hook).create_event_export(**body)
        try:
            export_id = int(response["export_id"])
        except (KeyError, TypeError, ValueError):
            raise CometlyExportFailedError(
                f"Cometly Create Event Export answered without an export_id: {response!r}"
            ) from None
        self.log.info(
            "Created Cometly export %s for %s (%s)", export_id, body["date"], response.get("status")
        )
        return export_id

    def _creation_hook(self, hook: CometlyHook) -> CometlyHook:
        """A hook whose retries outlast full rate-limit windows (5 creations per window per Space)."""
        policy = hook.retry_policy
        window = hook.rate_limit_policy.window_seconds
        params = {
            **self.hook_params,
            "max_attempts": max(policy.max_attempts, self.create_max_attempts),
            "retry_max_wait": max(policy.max_wait, window),
        }
        return CometlyHook(self.cometly_conn_id, **params)

    def _reusable_export(self, hook: CometlyHook, pending: _PendingExport) -> int | None:
        """The export a previous try of this task instance created, if it is still worth waiting for."""
        record = pending.load()
        if record is None:
            return None
        export_id = int(record["export_id"])
        try:
            status = EventExportStatus.parse(hook.get_event_export(export_id).get("status"), export_id)
        except CometlyNotFoundError:
            self.log.warning(
                "Export %s of try %s no longer exists; creating a new one",
                export_id,
                record.get("try_number"),
            )
            return None
        except TRANSIENT_ERRORS as err:
            # Still the best bet: the wait tolerates transient errors until its timeout.
            self.log.warning("Cannot check export %s (%s); reusing it anyway", export_id, err)
            return export_id
        if status is EventExportStatus.FAILED:
            self.log.warning("Export %s of a previous try failed; creating a new one", export_id)
            return None
        self.log.info(
            "Reusing Cometly export %s (%s) created by try %s of this task instance instead of creating "
            "another",
            export_id,
            status.value,
            record.get("try_number"),
        )
        return export_id

    def _wait(self, hook: CometlyHook, export_id: int, interval: float, last: PollOutcome) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout  # in-process wait: a monotonic clock is right here
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CometlyExportTimeoutError(
                    timeout_message(export_id, f"within {self.timeout:g} s", last)
                )
            time.sleep(min(interval, remaining))
            outcome = poll_export(hook, export_id, self.log)
            if outcome.result is not None:
                return outcome.result
            last = PollOutcome(status=outcome.status or last.status, error=outcome.error)


class _PendingExport:
    """The Airflow Variable that remembers which export this task instance's tries are waiting for."""

    def __init__(self, ti: Any, fingerprint: str | None, log: Any) -> None:
        self.ti = ti
        self.fingerprint = fingerprint
        self.log = log
        ident = json.dumps([ti.dag_id, ti.run_id, ti.task_id, ti.map_index])
        # Digest: Variable keys are at most 250 characters, dag and run ids can be longer.
        self.key = PENDING_EXPORT_VARIABLE_PREFIX + hashlib.sha256(ident.encode()).hexdigest()[:40]

    def load(self) -> dict[str, Any] | None:
        try:
            raw = Variable.get(self.key, default=None)
        except Exception as err:  # best effort: at worst one more export is created
            self.log.warning("Cannot read Variable %s (%s); creating a new export", self.key, err)
            return None
        try:
            record = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint:
            return None  # another request (edited DAG, other Space): not the same export
        if not isinstance(record.get("export_id"), int):
            return None
        return record

    def save(self, export_id: int) -> None:
        record = {
            "export_id": export_id,
            "fingerprint": self.fingerprint,
            "dag_id": self.ti.dag_id,
            "run_id": self.ti.run_id,
            "task_id": self.ti.task_id,
            "map_index": self.ti.map_index,
            "try_number": self.ti.try_number,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        try:
            Variable.set(
                self.key,
                json.dumps(record),
                description="Cometly export in flight for a CreateEventExportOperator task instance; "
                "reused by its retries, deleted when the task ends",
            )
        except Exception as err:
            self.log.warning("Cannot record export %s in Variable %s (%s)", export_id, self.key, err)

    def clear(self) -> None:
        try:
            Variable.delete(self.key)
        except Exception as err:
            self.log.warning("Cannot delete Variable %s (%s)", self.key, err)


def _after_failure(pending: _PendingExport | None, ti: Any, err: BaseException) -> None:
    """Forget the export unless a retry of this task instance may still reuse it."""
    if pending is None:
        return
    # A 404 is left to the retry's own check: it may be a blip, and a gone export is detected there.
    final = isinstance(err, AirflowFailException | AirflowSensorTimeout) or not _retries_left(ti)
    if isinstance(err, CometlyExportFailedError) or final:
        pending.clear()


def _retries_left(ti: Any) -> bool:
    max_tries, try_number = getattr(ti, "max_tries", 0), getattr(ti, "try_number", 1)
    return isinstance(max_tries, int) and max_tries != 0 and try_number <= max_tries


def _fingerprint(space: str, body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps([space, body], sort_keys=True).encode()).hexdigest()


def _untemplated(name: str, value: Any) -> Any:
    """Undo what rendering a template to text does to an optional parameter.

    Without ``render_template_as_native_obj`` a template gives ``"None"`` for a missing value,
    ``"['a', 'b']"`` for a list and ``"30"`` for a number. Anything else is left for validation
    to judge (and to name in its error).
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text in ("", "None", "null"):
        return None
    if name in _LIST_PARAMS and text.startswith("[") and text.endswith("]"):
        try:
            parsed = parse_rendered_literal(text)
        except ValueError:
            return value
        return parsed if isinstance(parsed, list) else value
    if name == "attribution_window" and text.isascii() and text.isdigit():
        return int(text)
    return value
