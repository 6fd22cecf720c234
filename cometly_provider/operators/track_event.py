"""TrackEventOperator: send conversions to Cometly exactly once, from one event to millions."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from array import array
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow.providers.common.compat.sdk import BaseOperator

from cometly_provider.exceptions import (
    CometlyAuthError,
    CometlyError,
    CometlyInputError,
    CometlyValidationError,
)
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.utils.ndjson_source import BadLine, NdjsonSource, looks_like_location, parse_source
from cometly_provider.utils.rendered import parse_rendered_literal
from cometly_provider.utils.storage import NDJSON_CONTENT_TYPE, MiB, open_writer, parse_destination
from cometly_provider.validation import (
    BOOLEAN_TRACK_FIELDS,
    TRACK_FIELDS,
    normalize_track_event,
    track_event_problems,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from cometly_provider.utils.storage import ObjectWriter

ON_INVALID = ("fail", "skip")
IDEMPOTENCY_SCOPES = ("run", "dag")
MAX_WORKERS_LIMIT = 64
#: Entries of the ``invalid`` / ``failed_events`` lists kept in the XCom result.
INLINE_LIMIT = 100
#: Problems quoted in the error of a batch that fails validation.
MESSAGE_PROBLEMS = 20
_KEY_VERSION = "cometly-track/v1"
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def derive_idempotency_key(
    event: Mapping[str, Any],
    *,
    dag_id: str,
    task_id: str,
    run_id: str | None,
    map_index: int = -1,
    occurrence: int = 0,
) -> str:
    """The ``idempotency_key`` :class:`TrackEventOperator` gives an event that has none.

    ``run_id=None`` gives the key of ``idempotency_scope="dag"``. ``occurrence`` counts earlier
    events of the same batch with identical content (0 for the first).
    """
    payload = normalize_track_event(event)
    payload.pop("idempotency_key", None)
    return _derive_key(
        _identity(dag_id, task_id, run_id, map_index), _digest(_canonical(payload)), occurrence
    )


def _identity(dag_id: str, task_id: str, run_id: str | None, map_index: int) -> bytes:
    scope = "dag" if run_id is None else "run"
    parts = (_KEY_VERSION, scope, dag_id, task_id, run_id or "", str(map_index))
    return "\0".join(parts).encode() + b"\0"


def _canonical(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _digest(canonical: str) -> bytes:
    return hashlib.sha256(canonical.encode()).digest()


def _derive_key(identity: bytes, digest: bytes, occurrence: int) -> str:
    return hashlib.sha256(identity + digest + occurrence.to_bytes(8, "big")).hexdigest()[:40]


def _prefix(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


# --- sources -------------------------------------------------------------------------------------


class _Source(Protocol):
    label: str  # "index" (0-based, lists) or "line" (1-based, files)
    description: str

    def rows(self) -> Iterator[tuple[int, Any]]: ...


class _ListSource:
    label = "index"

    def __init__(self, items: Sequence[Any], description: str) -> None:
        self.items = items
        self.description = description

    def rows(self) -> Iterator[tuple[int, Any]]:
        return enumerate(self.items)


class _FileSource:
    label = "line"

    def __init__(self, source: NdjsonSource) -> None:
        self.source = source
        self.description = f"NDJSON file {source.uri}"

    def rows(self) -> Iterator[tuple[int, Any]]:
        return self.source.rows()


@dataclass
class _Prepared:
    payload: dict[str, Any] | None
    problems: list[str]
    digest: bytes | None = None  # content digest, when the key must be derived
    problem_field: str | None = None  # the event field of the first problem


def _prepare(raw: Any, *, allow_unknown_fields: bool) -> _Prepared:
    """Normalize and validate one event; the same input always gives the same result."""
    if isinstance(raw, BadLine):
        return _Prepared(None, [raw.reason])
    if not isinstance(raw, Mapping):
        return _Prepared(None, [f"an event must be a JSON object (dict), got {type(raw).__name__}"])
    payload = normalize_track_event(raw)
    found = track_event_problems(payload, allow_unknown_fields=allow_unknown_fields)
    if found:
        return _Prepared(None, [p.message for p in found], problem_field=found[0].field)
    key = payload.get("idempotency_key")
    own_key = isinstance(key, str) and bool(key.strip())
    if not own_key:
        payload.pop("idempotency_key", None)  # blank: derive one instead
    try:
        canonical = _canonical(payload)
    except (TypeError, ValueError) as err:
        return _Prepared(None, [f"the event cannot be sent as JSON: {err}"])
    return _Prepared(payload, [], None if own_key else _digest(canonical))


@dataclass
class _Plan:
    """What the validation pass learned."""

    total: int = 0
    valid: int = 0
    invalid_count: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)
    # What the error names: the batch, or for a single event the field at fault.
    invalid_field: str = "events"
    # 8-byte prefixes of content digests seen more than once: only those need occurrence counters.
    repeated: frozenset[int] = frozenset()


@dataclass
class _Item:
    position: int
    payload: dict[str, Any]


@dataclass
class _Outcome:
    item: _Item
    duplicate: bool = False
    error: CometlyError | None = None


class _Cancelled(CometlyError):
    """The batch stopped (failure elsewhere, or the task was killed) before this event was sent."""

    def __init__(self) -> None:
        super().__init__("Cometly tracking stopped before this event was sent")


@dataclass
class _Stats:
    total: int = 0
    to_send: int = 0
    sent: int = 0
    duplicates: int = 0
    skipped_invalid: int = 0
    failed: int = 0
    validation_failures: int = 0  # of ``failed``: rejected by the API with 4xx
    consecutive_failures: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.sent + self.duplicates + self.failed

    def rate_per_min(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed * 60 if elapsed > 0 else 0.0


class _FailureSink:
    """Failed events: streamed to ``failed_events_path`` as NDJSON, else kept (capped) for XCom."""

    logged_limit = 20

    def __init__(self, writer: ObjectWriter | None, label: str, log: Any) -> None:
        self.writer = writer
        self.label = label
        self.log = log
        self.inline: list[dict[str, Any]] = []
        self.count = 0

    def add(self, item: _Item, error: CometlyError) -> None:
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
            line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
            self.writer.write(line.encode())
        elif len(self.inline) < INLINE_LIMIT:
            self.inline.append(entry)


# --- the operator ---------------------------------------------------------------------------------


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

    **Validation first.** Every event is normalized (datetimes, dates and Decimals become JSON;
    ``event_time`` may be a datetime, an ISO 8601 string or unix seconds) and checked against the
    API reference before anything is sent. Invalid rows are reported with their ``index`` (0-based,
    lists) or ``line`` (1-based, files) and the reason. With ``on_invalid="fail"`` (default) the
    task fails and nothing is sent; with ``"skip"`` the valid rows are sent and the rest counted.

    **Exactly once.** An event's own ``idempotency_key`` is kept. Otherwise the operator derives
    one: a sha256 (40 hex characters) of the task identity (dag_id, task_id, run_id, map_index) and
    the event's content (canonical JSON, sorted keys) plus the number of identical events before it
    in the batch. Because the key depends on content, not position, a retried or cleared task sends
    each event with the same key even if its upstream returns the rows in another order, and the
    API stores each event once (later copies answer ``duplicate: true``). With
    ``idempotency_scope="dag"`` the run_id is left out, so overlapping or repeated runs that send the
    same event also store it once. Changing an event's content (or the task/dag id) makes it a new
    event. Note that the API also deduplicates on ``order_id``.

    **Sending.** The first event goes alone (a rejected API key costs one request and stops the
    task at once with :class:`~cometly_provider.exceptions.CometlyAuthError`); the rest go through
    ``max_workers`` threads sharing one pooled hook, paced by the hook's per-Space rate limiter (1000
    events/min in production) with a bounded number of events in flight. The hook retries 429, 5xx
    and broken connections; an event that still fails, or that the API rejects (422), is recorded
    with its reason in ``failed_events_path`` (NDJSON, one ``{"index"|"line", "status", "error",
    "reason", "event"}`` per line; always written when set, so it never shows a previous try's
    failures) or in the result (first 100). The task then fails unless ``allow_failures=True``.
    After ``max_consecutive_failures`` transport/server failures in a row the batch stops and the
    task fails (retrying it is safe). A progress line (sent/total, rate, ETA) is logged at least
    every ``progress_interval_s`` seconds.

    Returns (XCom) ``total``, ``sent`` (newly stored), ``duplicates`` (already stored: a retry),
    ``skipped_invalid``, ``failed`` (these four add up to ``total``), ``invalid`` (first 100
    ``{index|line, reason}``), ``failed_events`` (first 100, with ``failed_events_truncated``) or
    ``failed_events_path``, ``duration_s`` and ``rate_per_min``; plus ``idempotency_key`` for a
    single event.

    Works with dynamic task mapping: ``TrackEventOperator.partial(task_id=...).expand(events=...)``
    or ``.expand(event=...)`` (field keyword arguments cannot be mapped; map ``event`` instead).

    :param cometly_conn_id: the Cometly connection.
    :param event: one event payload. Templated.
    :param events: a list of payloads or an NDJSON location. Templated.
    :param on_invalid: ``"fail"`` (nothing is sent if any event is invalid) or ``"skip"``.
    :param max_workers: sending threads (1 to 64); the rate limit, not this, bounds throughput.
    :param allow_failures: succeed even when some events failed (they are still reported).
    :param failed_events_path: where to write failed events as NDJSON: ``s3://``, ``gs://``,
        ``file://`` or an absolute path. Templated; include ``{{ run_id }}`` / ``{{ ti.map_index }}``
        to keep runs and mapped tasks apart.
    :param idempotency_scope: ``"run"`` (default) or ``"dag"``, see above.
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
        self.allow_unknown_fields = allow_unknown_fields
        self.storage_conn_id = storage_conn_id
        self.hook_params = dict(hook_params or {})
        self._stop = threading.Event()
        _check_settings(self)

    # --- execution ------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        self._stop = threading.Event()
        source, single = self._source()
        identity = self._task_identity(context)
        failed_destination = None
        if self.failed_events_path is not None:
            path = self.failed_events_path.strip()
            failed_destination = parse_destination(
                "file://" + path if path.startswith("/") else path, field="failed_events_path"
            )
        stats = _Stats()
        plan = self._validate(source, stats, single=single)
        if plan.total == 0:
            self.log.warning("No events to send (%s is empty)", source.description)
        hook = CometlyHook(
            self.cometly_conn_id,
            **{
                **self.hook_params,
                "pool_size": max(int(self.hook_params.get("pool_size", 0)), self.max_workers),
            },
        )
        writer: ObjectWriter | None = None
        if failed_destination is not None:
            writer = open_writer(
                failed_destination,
                conn_id=self.storage_conn_id,
                replace=True,
                part_size=8 * MiB,
                max_concurrency=2,
                content_type=NDJSON_CONTENT_TYPE,
                log=self.log,
            )
            writer.begin()
        sink = _FailureSink(writer, source.label, self.log)
        single_key: str | None = None
        try:
            items = self._items(source, plan, identity)
            if single:
                one = list(items)
                single_key = one[0].payload.get("idempotency_key") if one else None
                items = iter(one)
            self._send(hook, items, stats, sink)
            if writer is not None:
                writer.commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            hook.close()
        summary = self._summary(stats, plan, sink, failed_destination.uri if failed_destination else None)
        if single_key is not None:
            summary["idempotency_key"] = single_key
        brief = {k: v for k, v in summary.items() if k not in ("invalid", "failed_events")}
        self.log.info("Cometly tracking summary: %s", json.dumps(brief))
        if stats.failed and not self.allow_failures:
            self._fail(stats, summary)
        return summary

    def on_kill(self) -> None:
        self._stop.set()

    def _source(self) -> tuple[_Source, bool]:
        """The rendered input as a source of rows; ``True`` for a single event."""
        given = [
            name for name, value in (("event", self.event), ("events", self.events)) if value is not None
        ]
        if self.event_fields:
            given.append("event field keyword arguments")
        if len(given) != 1:
            raise CometlyInputError(
                "TrackEventOperator needs exactly one of event=, events= or event field keyword "
                f"arguments (event_name=, email=, ...); got {', '.join(given) if given else 'none'}",
                field="events" if "events" in given else "event",
            )
        if self.event_fields:
            return _ListSource([_coerce_field_kwargs(self.event_fields)], "1 event"), True
        if self.event is not None:
            event = _parse_literal(self.event, "event")
            if not isinstance(event, Mapping):
                raise CometlyInputError(
                    f"event={_short(self.event)} is invalid: expected one event as a dict (or a JSON "
                    "object string); for several events use events=",
                    field="event",
                )
            return _ListSource([event], "1 event"), True
        events = self.events
        if isinstance(events, str):
            text = events.strip()
            if text.startswith(("[", "{")):
                events = _parse_literal(text, "events")
            elif looks_like_location(text):
                return _FileSource(NdjsonSource(parse_source(text), conn_id=self.storage_conn_id)), False
            else:
                raise CometlyInputError(
                    f"events={_short(events)} is invalid: expected a list of event dicts, a JSON array, or "
                    "an NDJSON location (s3://bucket/key, gs://bucket/key, file:///path or /path)",
                    field="events",
                )
        if isinstance(events, Mapping) or not isinstance(events, Sequence) or isinstance(events, bytes | str):
            raise CometlyInputError(
                f"events={_short(events)} is invalid: expected a list of event dicts (for one event "
                "use event=), a JSON array, or an NDJSON location (s3://, gs://, file:// or /path)",
                field="events",
            )
        return _ListSource(events, f"{len(events):,} events from a list"), False

    def _task_identity(self, context: Context) -> bytes:
        ti = context.get("ti") or context.get("task_instance")
        dag_id = getattr(ti, "dag_id", None) or self.dag_id
        task_id = getattr(ti, "task_id", None) or self.task_id
        run_id = getattr(ti, "run_id", None) or context.get("run_id")
        map_index = getattr(ti, "map_index", None)
        map_index = -1 if map_index is None else int(map_index)
        if self.idempotency_scope == "dag":
            return _identity(str(dag_id), str(task_id), None, map_index)
        if not run_id:
            raise CometlyInputError(
                "idempotency_scope='run' needs the run_id of the task instance, and the context has none",
                field="idempotency_scope",
            )
        return _identity(str(dag_id), str(task_id), str(run_id), map_index)

    def _validate(self, source: _Source, stats: _Stats, *, single: bool = False) -> _Plan:
        """First pass: count, validate, and find repeated contents, streaming."""
        plan = _Plan()
        prefixes = array("Q")
        last_log = time.monotonic()
        for position, raw in source.rows():
            plan.total += 1
            prepared = _prepare(raw, allow_unknown_fields=self.allow_unknown_fields)
            if prepared.problems:
                if single and prepared.problem_field is not None:
                    plan.invalid_field = prepared.problem_field
                plan.invalid_count += 1
                if len(plan.invalid) < INLINE_LIMIT:
                    plan.invalid.append({source.label: position, "reason": "; ".join(prepared.problems)})
            else:
                plan.valid += 1
                if prepared.digest is not None:
                    prefixes.append(_prefix(prepared.digest))
            if plan.total % 1000 == 0 and time.monotonic() - last_log >= self.progress_interval_s:
                last_log = time.monotonic()
                self.log.info("Validating %s: %d rows checked so far", source.description, plan.total)
        plan.repeated = _repeated(prefixes)
        del prefixes
        stats.total = plan.total
        stats.to_send = plan.valid
        stats.skipped_invalid = plan.invalid_count
        if plan.invalid_count:
            self._report_invalid(source, plan)
        self.log.info(
            "Validated %s: %d valid, %d invalid", source.description, plan.valid, plan.invalid_count
        )
        return plan

    def _report_invalid(self, source: _Source, plan: _Plan) -> None:
        lines = [
            f"  {source.label} {p[source.label]}: {p['reason']}" for p in plan.invalid[:MESSAGE_PROBLEMS]
        ]
        more = plan.invalid_count - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        verb = "is" if plan.invalid_count == 1 else "are"
        head = f"{plan.invalid_count} of {plan.total} events {verb} invalid"
        if self.on_invalid == "fail":
            raise CometlyInputError(
                f"{head}; nothing was sent (on_invalid='fail'):\n"
                + "\n".join(lines)
                + "\nFix the events, or set on_invalid='skip' to send the valid ones.",
                field=plan.invalid_field,
            )
        self.log.warning("%s; skipping them (on_invalid='skip'):\n%s", head, "\n".join(lines))

    def _items(self, source: _Source, plan: _Plan, identity: bytes) -> Iterator[_Item]:
        """Second pass: the valid events, each with its idempotency key."""
        occurrences: dict[bytes, int] = {}
        count = 0
        for position, raw in source.rows():
            prepared = _prepare(raw, allow_unknown_fields=self.allow_unknown_fields)
            if prepared.payload is None:
                continue
            payload = prepared.payload
            if prepared.digest is not None:
                occurrence = 0
                if _prefix(prepared.digest) in plan.repeated:
                    occurrence = occurrences.get(prepared.digest, 0)
                    occurrences[prepared.digest] = occurrence + 1
                payload["idempotency_key"] = _derive_key(identity, prepared.digest, occurrence)
            count += 1
            yield _Item(position, payload)
        if count != plan.valid:
            raise CometlyInputError(
                f"{source.description} gave {count} valid events while sending but {plan.valid} when "
                "validated: it changed meanwhile. Run the task again.",
                field="events",
            )

    def _send(self, hook: CometlyHook, items: Iterator[_Item], stats: _Stats, sink: _FailureSink) -> None:
        progress = _Progress(self, stats, hook)
        first = next(items, None)
        if first is None:
            return
        progress.start()
        # Alone first: a bad key, host or payload shape shows up after one request, not max_workers.
        self._record(self._send_one(hook, first), stats, sink)
        limit = self.max_workers * self.queue_per_worker
        inflight: set[Future[_Outcome]] = set()
        executor = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="cometly-track")
        try:
            for item in items:
                while len(inflight) >= limit:
                    inflight = self._collect(inflight, stats, sink, progress, block=True)
                inflight.add(executor.submit(self._send_one, hook, item))
                if len(inflight) >= limit // 2:
                    inflight = self._collect(inflight, stats, sink, progress, block=False)
            while inflight:
                inflight = self._collect(inflight, stats, sink, progress, block=True)
        except BaseException as err:
            self._stop.set()  # queued events are not sent; running requests finish
            for future in inflight:
                future.cancel()
            if isinstance(err, CometlyAuthError):
                self.log.error(
                    "Cometly rejected the API key (HTTP %s) after %d events were sent; stopping the batch",
                    err.status_code,
                    stats.sent + stats.duplicates,
                )
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        progress.log(final=True)

    def _collect(
        self,
        inflight: set[Future[_Outcome]],
        stats: _Stats,
        sink: _FailureSink,
        progress: _Progress,
        *,
        block: bool,
    ) -> set[Future[_Outcome]]:
        if block:
            done, pending = wait(inflight, timeout=progress.seconds_to_next(), return_when=FIRST_COMPLETED)
        else:
            done = {f for f in inflight if f.done()}
            pending = inflight - done
        for future in done:
            self._record(future.result(), stats, sink)
        progress.maybe_log()
        return set(pending)

    def _send_one(self, hook: CometlyHook, item: _Item) -> _Outcome:
        if self._stop.is_set():
            raise _Cancelled()
        try:
            response = hook.track_event(item.payload, validate=False)
        except CometlyAuthError:
            self._stop.set()
            raise
        except CometlyError as err:
            return _Outcome(item, error=err)
        return _Outcome(item, duplicate=response.get("duplicate") is True)

    def _record(self, outcome: _Outcome, stats: _Stats, sink: _FailureSink) -> None:
        error = outcome.error
        if error is None:
            stats.consecutive_failures = 0
            if outcome.duplicate:
                stats.duplicates += 1
            else:
                stats.sent += 1
            return
        stats.failed += 1
        sink.add(outcome.item, error)
        if isinstance(error, CometlyValidationError):
            stats.validation_failures += 1
            return
        stats.consecutive_failures += 1
        if stats.consecutive_failures >= self.max_consecutive_failures:
            not_tried = stats.to_send - stats.done
            raise CometlyError(
                f"Stopped the batch after {stats.consecutive_failures} failures in a row (last: {error}); "
                f"{stats.sent} events sent, {stats.duplicates} duplicates, {stats.failed} failed, about "
                f"{not_tried} not attempted. Retrying the task is safe: events already stored keep their "
                "idempotency keys and are not counted twice.",
                status_code=error.status_code,
            )

    def _summary(
        self, stats: _Stats, plan: _Plan, sink: _FailureSink, failed_uri: str | None
    ) -> dict[str, Any]:
        duration = time.monotonic() - stats.started
        summary: dict[str, Any] = {
            "total": stats.total,
            "sent": stats.sent,
            "duplicates": stats.duplicates,
            "skipped_invalid": stats.skipped_invalid,
            "failed": stats.failed,
            "invalid": plan.invalid,
            "invalid_truncated": plan.invalid_count > len(plan.invalid),
        }
        if failed_uri is not None:
            summary["failed_events_path"] = failed_uri
        else:
            summary["failed_events"] = sink.inline
            summary["failed_events_truncated"] = sink.count > len(sink.inline)
            if sink.count > len(sink.inline):
                self.log.warning(
                    "%d events failed; the result lists the first %d (set failed_events_path to keep all)",
                    sink.count,
                    len(sink.inline),
                )
        summary["duration_s"] = round(duration, 3)
        summary["rate_per_min"] = round(stats.rate_per_min(), 1)
        return summary

    def _fail(self, stats: _Stats, summary: Mapping[str, Any]) -> None:
        where = (
            f"written to {summary['failed_events_path']}"
            if "failed_events_path" in summary
            else "listed in the log above"
        )
        message = (
            f"{stats.failed} of {stats.total} Cometly events failed ({where}); {stats.sent} sent, "
            f"{stats.duplicates} duplicates. Set allow_failures=True to let the task succeed anyway."
        )
        if stats.validation_failures == stats.failed:
            # Only API rejections: an Airflow retry would be rejected again.
            raise CometlyValidationError(message, status_code=422)
        raise CometlyError(message + " Retrying is safe: stored events are not counted twice.")


class _Progress:
    """Progress lines at least every ``progress_interval_s`` during a batch."""

    def __init__(self, op: TrackEventOperator, stats: _Stats, hook: CometlyHook) -> None:
        self.op = op
        self.stats = stats
        self.hook = hook
        self.next_at = time.monotonic() + op.progress_interval_s

    def start(self) -> None:
        stats = self.stats
        remaining = stats.to_send - stats.done
        if remaining <= 0:
            return
        policy = self.hook.rate_limit_policy
        bound = ""
        if policy.enabled:
            limit = policy.limit_for("track")
            bound = (
                f"; at {limit} per {policy.window_seconds:g} s this takes at least "
                f"{_duration((math.ceil(remaining / limit) - 1) * policy.window_seconds)}"
            )
        self.op.log.info("Sending %d events with %d threads%s", remaining, self.op.max_workers, bound)
        self.next_at = time.monotonic() + self.op.progress_interval_s

    def seconds_to_next(self) -> float:
        return max(0.05, self.next_at - time.monotonic())

    def maybe_log(self) -> None:
        if time.monotonic() >= self.next_at:
            self.log()

    def log(self, *, final: bool = False) -> None:
        stats = self.stats
        rate = stats.rate_per_min()
        remaining = stats.to_send - stats.done
        eta = _duration(remaining / rate * 60) if rate > 0 else "unknown"
        self.op.log.info(
            "%s %d/%d events (%.0f%%): %d sent, %d duplicates, %d failed; %.0f events/min%s",
            "Done:" if final else "Progress:",
            stats.done,
            stats.to_send,
            100.0 * stats.done / stats.to_send if stats.to_send else 100.0,
            stats.sent,
            stats.duplicates,
            stats.failed,
            rate,
            "" if final else f", ETA {eta}",
        )
        self.next_at = time.monotonic() + self.op.progress_interval_s


# --- helpers --------------------------------------------------------------------------------------


def _check_settings(op: TrackEventOperator) -> None:
    """Parse-time checks of what templates cannot change."""
    if op.on_invalid not in ON_INVALID:
        raise CometlyInputError(
            f"on_invalid={op.on_invalid!r} is not allowed: use 'fail' or 'skip'", field="on_invalid"
        )
    if op.idempotency_scope not in IDEMPOTENCY_SCOPES:
        raise CometlyInputError(
            f"idempotency_scope={op.idempotency_scope!r} is not allowed: use 'run' or 'dag'",
            field="idempotency_scope",
        )
    workers = op.max_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS_LIMIT:
        raise CometlyInputError(
            f"max_workers={workers!r} is not allowed: use an integer from 1 to {MAX_WORKERS_LIMIT}",
            field="max_workers",
        )
    for name in ("allow_failures", "allow_unknown_fields"):
        if not isinstance(getattr(op, name), bool):
            raise CometlyInputError(f"{name}={getattr(op, name)!r} must be True or False", field=name)
    path = op.failed_events_path
    if path is not None and not isinstance(path, str):
        raise CometlyInputError(
            f"failed_events_path={path!r} must be a string (s3://, gs://, file:// or an absolute path)",
            field="failed_events_path",
        )
    given = [n for n, v in (("event", op.event), ("events", op.events)) if v is not None]
    if op.event_fields:
        given.append("event field keyword arguments (" + ", ".join(sorted(op.event_fields)) + ")")
    if len(given) > 1:
        raise CometlyInputError(
            f"TrackEventOperator takes exactly one of event=, events= or event field keyword arguments; "
            f"got {' and '.join(given)}",
            field="event",
        )
    if not given:
        raise CometlyInputError(
            "TrackEventOperator needs the event(s) to send: event={...}, events=[...] / an NDJSON "
            "location, or event fields as keyword arguments (event_name=..., email=...)",
            field="event",
        )


def _coerce_field_kwargs(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Templated keyword arguments render to strings: turn numbers and booleans back."""
    out = dict(fields)
    amount = out.get("amount")
    if isinstance(amount, str) and _NUMBER.match(amount.strip()):
        text = amount.strip()
        out["amount"] = int(text) if text.lstrip("+-").isdigit() else float(text)
    for name in BOOLEAN_TRACK_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            out[name] = value.strip().lower() == "true"
    return out


def _parse_literal(value: Any, name: str) -> Any:
    """A rendered JSON (or Python-literal, from a plain ``{{ xcom }}`` template) string, parsed."""
    if not isinstance(value, str):
        return value
    try:
        return parse_rendered_literal(value.strip())
    except ValueError:
        raise CometlyInputError(
            f"{name}={_short(value)} is not valid JSON (nor a Python literal)", field=name
        ) from None


def _repeated(prefixes: array[int]) -> frozenset[int]:
    """Values present more than once (8 bytes per event while sorting, not a dict of all events)."""
    if len(prefixes) < 2:
        return frozenset()
    repeated: set[int] = set()
    previous: int | None = None
    for value in sorted(prefixes):
        if value == previous:
            repeated.add(value)
        previous = value
    return frozenset(repeated)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


__all__ = ["TrackEventOperator", "derive_idempotency_key"]
