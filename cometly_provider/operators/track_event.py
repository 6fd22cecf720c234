"""TrackEventOperator: send conversions to Cometly exactly once, from one event to millions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from cometly_provider.exceptions import CometlyInputError, CometlyTaskKilled
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.tracking.batch import TrackingBatch, TrackingSettings, check_settings
from cometly_provider.tracking.keys import KeyScope, derive_idempotency_key
from cometly_provider.tracking.sender import SenderSettings
from cometly_provider.tracking.sources import event_source
from cometly_provider.utils.storage import parse_destination
from cometly_provider.validation import TRACK_FIELDS

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


class TrackEventOperator(BaseOperator):
    """
    Send conversion events to Cometly (POST /events/track), each stored exactly once.

    Give exactly one of:

    * ``event``: one payload (a dict, or a JSON object string);
    * the documented fields as keyword arguments (``event_name=``, ``email=``, ``amount=``,
      ``order_id=``, ``event_time=``, ``profile_field_1=`` ...; every name of
      :data:`cometly_provider.validation.TRACK_FIELDS`), each templated. ``email=`` here is the
      customer's address for the event, never Airflow's alert address (``default_args["email"]``
      keeps that role). Rendered strings are converted for ``amount`` ("12.5") and the boolean
      fields ("true" / "false"); ``None`` means "field absent";
    * ``events``: a batch: a list of payloads (e.g. an ``XComArg`` from a TaskFlow task, or a template
      rendering to a JSON array), or the location of an NDJSON file, plain or gzip (detected from
      the bytes, not the name): ``s3://bucket/key``, ``gs://bucket/key``, ``file:///path`` or
      ``/path``. Files are streamed twice (validation, then sending), never held in memory.

    **Validation first.** The connection is checked (API key, host, extras) and every event is
    normalized (datetimes, dates and Decimals become JSON; ``event_time`` may be a datetime, an ISO
    8601 string or unix seconds) and checked against the API reference before anything is sent.
    Invalid rows are reported with their ``index`` (0-based, lists) or ``line`` (1-based, files) and
    the reason. With ``on_invalid="fail"`` (default) the task fails and nothing is sent; with
    ``"skip"`` the valid rows are sent and the rest counted.

    **Exactly once.** An event's own ``idempotency_key`` is kept. Otherwise the operator derives
    one (40 hex characters of a sha256) from the **run scope** and the event's **canonical
    content**, never from its position, its chunk or the map index (see
    :mod:`cometly_provider.tracking.keys`):

    * scope: ``idempotency_scope="run"`` (default): dag_id, task_id and run_id, so a retried or
      cleared task (mapped or not, its upstream reordered or re-chunked) sends each event with the
      key it had, and the API stores it once (later copies answer ``duplicate: true``);
      ``"dag"``: the dag_id only, so overlapping or repeated runs (and other tasks of the DAG)
      that send the same event also store it once;
    * content as the API stores it: strings trimmed (blank = absent), numbers by value (``100`` is
      ``100.0``), ``event_time`` as one UTC instant at whole seconds whatever its spelling (aware or
      naive datetime, ISO with ``Z`` or any offset, unix seconds). Events differing in any stored
      field (``event_time`` by one second included) get different keys;
    * ``idempotency_fields=["order_ref", ...]``: only these fields (the rows' natural key) make the
      key, so a row corrected between runs (another amount) is still the same conversion.

    **Identical events in one run scope are one logical event**: the second copy (in the same
    batch, in another mapped instance or in a retry) is answered ``duplicate`` and counted in
    ``duplicates`` (a warning says how many a batch had). Separate conversions must differ in a
    stored field (``order_id``, ``event_time`` ...) or carry their own ``idempotency_key``.
    The API also deduplicates on ``order_id``.

    **Sending.** The first event goes alone (a rejected API key costs one request and stops the
    task at once with :class:`~cometly_provider.exceptions.CometlyAuthError`); the rest go through
    ``max_workers`` threads sharing one pooled hook, paced by the hook's per-Space rate limiter (1000
    events/min in production) with a bounded number of events in flight. The hook retries 429, 5xx
    and broken connections; an event that still fails, or that the API rejects (422), is recorded
    with its reason in ``failed_events_path`` (NDJSON, one ``{"index"|"line", "status", "error",
    "reason", "event"}`` per line) or in the result (first 100). The file always shows the last
    try only: it is created at the first failure, and a previous try's file is deleted when nothing
    failed. The task then fails unless ``allow_failures=True``. After ``max_consecutive_failures``
    transport/server failures in a row the batch stops and the task fails (retrying it is safe).
    A SIGTERM (``on_kill``) stops the batch at once with
    :class:`~cometly_provider.exceptions.CometlyTaskKilled`, which leaves the task eligible for its
    retries. A progress line (sent/total, rate, ETA) is logged at least every
    ``progress_interval_s`` seconds.

    Returns (XCom) ``total``, ``sent`` (newly stored), ``duplicates`` (already stored: a retry),
    ``skipped_invalid``, ``failed`` (these four add up to ``total``), ``invalid`` (first 100
    ``{index|line, reason}``), ``failed_events`` (first 100, with ``failed_events_truncated``) or
    ``failed_events_path`` (``None`` when nothing failed), ``duration_s`` and ``rate_per_min``; plus
    ``idempotency_key`` for a single event.

    Works with dynamic task mapping: ``TrackEventOperator.partial(task_id=...).expand(events=...)``
    or ``.expand(event=...)`` (field keyword arguments cannot be mapped; map ``event`` instead).

    :param cometly_conn_id: the Cometly connection.
    :param event: one event payload. Templated.
    :param events: a list of payloads or an NDJSON location. Templated.
    :param on_invalid: ``"fail"`` (nothing is sent if any event is invalid) or ``"skip"``.
    :param max_workers: sending threads (1 to 64); the rate limit, not this, bounds throughput.
    :param allow_failures: succeed even when some events failed (they are still reported).
        Configuration mistakes (no API key, bad connection extras) fail the task whatever it says.
    :param failed_events_path: where to write failed events as NDJSON: ``s3://``, ``gs://``,
        ``file://`` or an absolute path. Templated; include ``{{ run_id }}`` / ``{{ ti.map_index }}``
        to keep runs and mapped tasks apart.
    :param idempotency_scope: ``"run"`` (default) or ``"dag"``, see above.
    :param idempotency_fields: event fields that identify a conversion (its natural key); every
        event without its own ``idempotency_key`` must have them. Default: the whole event.
    :param allow_unknown_fields: send fields that the API reference does not document.
    :param storage_conn_id: connection for ``s3://`` / ``gs://`` locations (default ``aws_default``
        / ``google_cloud_default``).
    :param hook_params: extra keyword arguments for :class:`CometlyHook` (e.g. ``max_attempts``).
    """

    template_fields: Sequence[str] = ("event", "events", "event_fields", "failed_events_path")
    template_fields_renderers = {"event": "json", "events": "json", "event_fields": "json"}
    ui_color = "#fde9d9"
    #: Seconds between progress log lines during a batch.
    progress_interval_s: float = 10.0
    #: Transport / server failures in a row (after the hook's retries) that stop a batch.
    max_consecutive_failures: int = 50
    #: Events queued for the threads, per worker: bounds memory whatever the batch size.
    queue_per_worker: int = 2

    def __init__(
        self,
        *,
        cometly_conn_id: str = CometlyHook.default_conn_name,
        event: Mapping[str, Any] | str | None = None,
        events: Sequence[Mapping[str, Any]] | str | None = None,
        on_invalid: str = "fail",
        max_workers: int = 8,
        allow_failures: bool = False,
        failed_events_path: str | None = None,
        idempotency_scope: str = "run",
        idempotency_fields: Sequence[str] | None = None,
        allow_unknown_fields: bool = False,
        storage_conn_id: str | None = None,
        hook_params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # When a mapped task is unmapped, `email` can only be BaseOperator's (partial() accepts no
        # event fields), e.g. inherited from default_args: it must not become the tracked email.
        from_mapped = getattr(self, "_BaseOperator__from_mapped", False)
        event_fields: dict[str, Any] = {}
        for name in list(kwargs):
            if name in TRACK_FIELDS and not (from_mapped and name == "email"):
                value = kwargs.pop(name)
                if value is not None:
                    event_fields[name] = value
        super().__init__(**kwargs)
        self.cometly_conn_id = cometly_conn_id
        self.event = event
        self.events = events
        self.event_fields = event_fields
        self.on_invalid = on_invalid
        self.max_workers = max_workers
        self.allow_failures = allow_failures
        self.failed_events_path = failed_events_path
        self.idempotency_scope = idempotency_scope
        self.idempotency_fields = list(idempotency_fields) if idempotency_fields is not None else None
        self.allow_unknown_fields = allow_unknown_fields
        self.storage_conn_id = storage_conn_id
        self.hook_params = dict(hook_params or {})
        # The running batch, set only inside execute(): the operator stays deep-copyable.
        self._batch: TrackingBatch | None = None
        check_settings(
            on_invalid=on_invalid,
            idempotency_scope=idempotency_scope,
            idempotency_fields=idempotency_fields,
            max_workers=max_workers,
            allow_failures=allow_failures,
            allow_unknown_fields=allow_unknown_fields,
            failed_events_path=failed_events_path,
        )
        given = [n for n, v in (("event", event), ("events", events)) if v is not None]
        if event_fields:
            given.append("event field keyword arguments (" + ", ".join(sorted(event_fields)) + ")")
        if len(given) > 1:
            raise CometlyInputError(
                "TrackEventOperator takes exactly one of event=, events= or event field keyword "
                f"arguments; got {' and '.join(given)}",
                field="event",
            )
        if not given:
            raise CometlyInputError(
                "TrackEventOperator needs the event(s) to send: event={...}, events=[...] / an NDJSON "
                "location, or event fields as keyword arguments (event_name=..., email=...)",
                field="event",
            )

    def execute(self, context: Context) -> dict[str, Any]:
        hook = CometlyHook(
            self.cometly_conn_id,
            **{
                **self.hook_params,
                "pool_size": max(int(self.hook_params.get("pool_size", 0)), self.max_workers),
            },
        )
        # A connection mistake fails here, before any request, whatever allow_failures says.
        hook.check_settings()
        source, single = event_source(
            event=self.event,
            events=self.events,
            event_fields=self.event_fields,
            storage_conn_id=self.storage_conn_id,
        )
        failed_destination = None
        if self.failed_events_path is not None:
            path = self.failed_events_path.strip()
            failed_destination = parse_destination(
                "file://" + path if path.startswith("/") else path, field="failed_events_path"
            )
        self._batch = TrackingBatch(self.tracking_settings(), self.key_scope(context), self.log)
        try:
            return self._batch.run(
                source,
                single=single,
                hook=hook,
                failed_destination=failed_destination,
                storage_conn_id=self.storage_conn_id,
            )
        finally:
            self._batch = None
            hook.close()

    def on_kill(self) -> None:
        """Stop the batch: Airflow calls this from the task's SIGTERM handler, in the main thread.

        Raising here unwinds the batch at once (queued events are not sent, the failed-events upload
        is aborted) with an error that the Task SDK retries, unlike ``AirflowTaskTerminated``.
        """
        batch = self._batch
        if batch is not None:
            self._batch = None
            batch.interrupt()
            raise CometlyTaskKilled("the task was killed while sending Cometly events; it can be retried")

    def tracking_settings(self) -> TrackingSettings:
        return TrackingSettings(
            on_invalid=self.on_invalid,
            allow_failures=self.allow_failures,
            allow_unknown_fields=self.allow_unknown_fields,
            idempotency_fields=tuple(self.idempotency_fields or ()),
            sender=SenderSettings(
                max_workers=self.max_workers,
                queue_per_worker=self.queue_per_worker,
                max_consecutive_failures=self.max_consecutive_failures,
                progress_interval_s=self.progress_interval_s,
            ),
        )

    def key_scope(self, context: Context) -> KeyScope:
        """The run scope of the derived keys; never the map index (see the class docstring)."""
        ti = context.get("ti") or context.get("task_instance")
        dag_id = str(getattr(ti, "dag_id", None) or self.dag_id)
        task_id = str(getattr(ti, "task_id", None) or self.task_id)
        if self.idempotency_scope == "dag":
            return KeyScope(dag_id, task_id, None)
        run_id = getattr(ti, "run_id", None) or context.get("run_id")
        if not run_id:
            raise CometlyInputError(
                "idempotency_scope='run' needs the run_id of the task instance, and the context has none",
                field="idempotency_scope",
            )
        return KeyScope(dag_id, task_id, str(run_id))


__all__ = ["TrackEventOperator", "derive_idempotency_key"]
