"""One tracking batch, from validation to the summary: the engine behind ``TrackEventOperator``.

Configured by values (settings, key scope, hook, failure destination); it knows nothing of the
operator or of Airflow's context, so it can be driven and tested on its own.
"""

from __future__ import annotations

import json
import time
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cometly_provider.exceptions import CometlyError, CometlyInputError, CometlyValidationError
from cometly_provider.tracking.failures import INLINE_LIMIT, FailureSink, Item
from cometly_provider.tracking.keys import IDEMPOTENCY_SCOPES, KeyScope, content_digest, key_for
from cometly_provider.tracking.sender import ConcurrentSender, SenderSettings, Stats
from cometly_provider.utils.ndjson_source import BadLine
from cometly_provider.utils.storage import NDJSON_CONTENT_TYPE, MiB, open_writer
from cometly_provider.validation import normalize_track_event, track_event_problems

if TYPE_CHECKING:
    from cometly_provider.hooks.cometly import CometlyHook
    from cometly_provider.tracking.sources import EventSource
    from cometly_provider.utils.storage import Destination

ON_INVALID = ("fail", "skip")
MAX_WORKERS_LIMIT = 64
#: Problems quoted in the error of a batch that fails validation.
MESSAGE_PROBLEMS = 20


@dataclass(frozen=True)
class TrackingSettings:
    on_invalid: str = "fail"
    allow_failures: bool = False
    allow_unknown_fields: bool = False
    idempotency_fields: tuple[str, ...] = ()
    sender: SenderSettings = field(default_factory=SenderSettings)


def check_settings(
    *,
    on_invalid: object,
    idempotency_scope: object,
    idempotency_fields: object,
    max_workers: object,
    allow_failures: object,
    allow_unknown_fields: object,
    failed_events_path: object,
) -> None:
    """What templates cannot change, checked when the task is defined."""
    if on_invalid not in ON_INVALID:
        raise CometlyInputError(
            f"on_invalid={on_invalid!r} is not allowed: use 'fail' or 'skip'", field="on_invalid"
        )
    if idempotency_scope not in IDEMPOTENCY_SCOPES:
        raise CometlyInputError(
            f"idempotency_scope={idempotency_scope!r} is not allowed: use 'run' or 'dag'",
            field="idempotency_scope",
        )
    check_idempotency_fields(idempotency_fields)
    if (
        isinstance(max_workers, bool)
        or not isinstance(max_workers, int)
        or not 1 <= max_workers <= MAX_WORKERS_LIMIT
    ):
        raise CometlyInputError(
            f"max_workers={max_workers!r} is not allowed: use an integer from 1 to {MAX_WORKERS_LIMIT}",
            field="max_workers",
        )
    for name, value in (("allow_failures", allow_failures), ("allow_unknown_fields", allow_unknown_fields)):
        if not isinstance(value, bool):
            raise CometlyInputError(f"{name}={value!r} must be True or False", field=name)
    if failed_events_path is not None and not isinstance(failed_events_path, str):
        raise CometlyInputError(
            f"failed_events_path={failed_events_path!r} must be a string (s3://, gs://, file:// or an "
            "absolute path)",
            field="failed_events_path",
        )


def check_idempotency_fields(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    allowed = "a non-empty list of event field names (the rows' natural key), e.g. ['order_id']"
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise CometlyInputError(
            f"idempotency_fields={value!r} is not allowed: use {allowed}", field="idempotency_fields"
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name.strip() or name == "idempotency_key":
            raise CometlyInputError(
                f"idempotency_fields has {name!r}: use {allowed} (not idempotency_key)",
                field="idempotency_fields",
            )
    if len(set(names)) != len(names):
        raise CometlyInputError(
            f"idempotency_fields={list(names)!r} names a field twice", field="idempotency_fields"
        )
    return names


@dataclass
class _Prepared:
    payload: dict[str, Any] | None
    problems: list[str]
    digest: bytes | None = None  # content digest, when the key must be derived
    problem_field: str | None = None  # the event field of the first problem


@dataclass
class Plan:
    """What the validation pass learned."""

    total: int = 0
    valid: int = 0
    invalid_count: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)
    # What the error names: the batch, or for a single event the field at fault.
    invalid_field: str = "events"
    # Valid events whose derived key equals an earlier event's: stored once (see keys.py).
    repeated: int = 0


class TrackingBatch:
    """Validate, key and send one batch; ``interrupt()`` stops it from another thread or a signal."""

    def __init__(self, settings: TrackingSettings, scope: KeyScope, log: Any) -> None:
        self.settings = settings
        self.scope = scope
        self.identity = scope.identity()
        self.log = log
        self._sender: ConcurrentSender | None = None

    def interrupt(self) -> None:
        if self._sender is not None:
            self._sender.stop()

    def run(
        self,
        source: EventSource,
        *,
        single: bool,
        hook: CometlyHook,
        failed_destination: Destination | None = None,
        storage_conn_id: str | None = None,
    ) -> dict[str, Any]:
        stats = Stats()
        plan = self.validate(source, stats, single=single)
        if plan.total == 0:
            self.log.warning("No events to send (%s is empty)", source.description)
        writer = None
        if failed_destination is not None:
            writer = open_writer(
                failed_destination,
                conn_id=storage_conn_id,
                replace=True,
                part_size=8 * MiB,
                max_concurrency=2,
                content_type=NDJSON_CONTENT_TYPE,
                log=self.log,
            )
        sink = FailureSink(writer, source.label, self.log)
        self._sender = sender = ConcurrentSender(hook, self.settings.sender, self.log)
        single_key: str | None = None
        try:
            items = self.items(source, plan)
            if single:
                one = list(items)
                single_key = one[0].payload.get("idempotency_key") if one else None
                items = iter(one)
            sender.run(items, stats, sink)
        except Exception:
            # The try failed (batch stopped, key rejected, timeout): the file lists its failures.
            self._finish_quietly(sink)
            raise
        except BaseException:
            sink.abort()  # killed: write nothing more, a retry follows
            raise
        failed_uri = sink.finish()
        summary = self._summary(stats, plan, sink, failed_uri, has_destination=writer is not None)
        if single_key is not None:
            summary["idempotency_key"] = single_key
        brief = {k: v for k, v in summary.items() if k not in ("invalid", "failed_events")}
        self.log.info("Cometly tracking summary: %s", json.dumps(brief))
        if stats.failed and not self.settings.allow_failures:
            self._fail(stats, summary)
        return summary

    # --- validation and keys ---------------------------------------------------------------------

    def prepare(self, raw: Any) -> _Prepared:
        """Normalize and validate one event; the same input always gives the same result."""
        if isinstance(raw, BadLine):
            return _Prepared(None, [raw.reason])
        if not isinstance(raw, Mapping):
            return _Prepared(None, [f"an event must be a JSON object (dict), got {type(raw).__name__}"])
        payload = normalize_track_event(raw)
        found = track_event_problems(payload, allow_unknown_fields=self.settings.allow_unknown_fields)
        if found:
            return _Prepared(None, [p.message for p in found], problem_field=found[0].field)
        key = payload.get("idempotency_key")
        own_key = isinstance(key, str) and bool(key.strip())
        if own_key:
            return _Prepared(payload, [])
        payload.pop("idempotency_key", None)  # blank: derive one instead
        fields = self.settings.idempotency_fields
        missing = [name for name in fields if _is_blank(payload.get(name))]
        if missing:
            return _Prepared(
                None,
                [
                    f"{', '.join(missing)} is missing, but idempotency_fields={list(fields)!r} names the "
                    "event's natural key: every event needs it (or its own idempotency_key)"
                ],
                problem_field=missing[0],
            )
        try:
            digest = content_digest(payload, fields)
        except (TypeError, ValueError, OverflowError) as err:
            return _Prepared(None, [f"the event cannot be sent as JSON: {err}"])
        return _Prepared(payload, [], digest)

    def validate(self, source: EventSource, stats: Stats, *, single: bool = False) -> Plan:
        """First pass: count, validate, and count events sharing a key, streaming."""
        plan = Plan()
        prefixes = array("Q")
        last_log = time.monotonic()
        for position, raw in source.rows():
            plan.total += 1
            prepared = self.prepare(raw)
            if prepared.problems:
                if single and prepared.problem_field is not None:
                    plan.invalid_field = prepared.problem_field
                plan.invalid_count += 1
                if len(plan.invalid) < INLINE_LIMIT:
                    plan.invalid.append({source.label: position, "reason": "; ".join(prepared.problems)})
            else:
                plan.valid += 1
                if prepared.digest is not None:
                    prefixes.append(int.from_bytes(prepared.digest[:8], "big"))
            interval = self.settings.sender.progress_interval_s
            if plan.total % 1000 == 0 and time.monotonic() - last_log >= interval:
                last_log = time.monotonic()
                self.log.info("Validating %s: %d rows checked so far", source.description, plan.total)
        plan.repeated = _repeats(prefixes)
        del prefixes
        stats.total = plan.total
        stats.to_send = plan.valid
        stats.skipped_invalid = plan.invalid_count
        if plan.invalid_count:
            self._report_invalid(source, plan)
        self.log.info(
            "Validated %s: %d valid, %d invalid", source.description, plan.valid, plan.invalid_count
        )
        if plan.repeated:
            basis = (
                f"the same idempotency_fields ({', '.join(self.settings.idempotency_fields)})"
                if self.settings.idempotency_fields
                else "the same content"
            )
            self.log.warning(
                "%d events have %s as an earlier event of this batch: they are the same logical event "
                "and are stored once (answered as duplicates). Give separate conversions an order_id, "
                "their own idempotency_key, or idempotency_fields naming what tells them apart.",
                plan.repeated,
                basis,
            )
        return plan

    def items(self, source: EventSource, plan: Plan) -> Iterator[Item]:
        """Second pass: the valid events, each with its idempotency key."""
        count = 0
        for position, raw in source.rows():
            prepared = self.prepare(raw)
            if prepared.payload is None:
                continue
            payload = prepared.payload
            if prepared.digest is not None:
                payload["idempotency_key"] = key_for(self.identity, prepared.digest)
            count += 1
            yield Item(position, payload)
        if count != plan.valid:
            raise CometlyInputError(
                f"{source.description} gave {count} valid events while sending but {plan.valid} when "
                "validated: it changed meanwhile. Run the task again.",
                field="events",
            )

    def _report_invalid(self, source: EventSource, plan: Plan) -> None:
        label = source.label
        lines = [f"  {label} {p[label]}: {p['reason']}" for p in plan.invalid[:MESSAGE_PROBLEMS]]
        more = plan.invalid_count - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        verb = "is" if plan.invalid_count == 1 else "are"
        head = f"{plan.invalid_count} of {plan.total} events {verb} invalid"
        if self.settings.on_invalid == "fail":
            raise CometlyInputError(
                f"{head}; nothing was sent (on_invalid='fail'):\n"
                + "\n".join(lines)
                + "\nFix the events, or set on_invalid='skip' to send the valid ones.",
                field=plan.invalid_field,
            )
        self.log.warning("%s; skipping them (on_invalid='skip'):\n%s", head, "\n".join(lines))

    # --- outcome ---------------------------------------------------------------------------------

    def _finish_quietly(self, sink: FailureSink) -> None:
        try:
            sink.finish()
        except Exception as err:  # the original error matters more than the report's
            where = sink.writer.uri if sink.writer is not None else "?"
            self.log.warning("Could not write the failed events to %s: %s", where, err)
            sink.abort()

    def _summary(
        self, stats: Stats, plan: Plan, sink: FailureSink, failed_uri: str | None, *, has_destination: bool
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
        if has_destination:
            summary["failed_events_path"] = failed_uri  # None: nothing failed, no file
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

    def _fail(self, stats: Stats, summary: Mapping[str, Any]) -> None:
        where = (
            f"written to {summary['failed_events_path']}"
            if summary.get("failed_events_path")
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


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _repeats(prefixes: array[int]) -> int:
    """How many values equal an earlier one (8 bytes per event while sorting, not a dict of all)."""
    if len(prefixes) < 2:
        return 0
    repeats = 0
    previous: int | None = None
    for value in sorted(prefixes):
        if value == previous:
            repeats += 1
        previous = value
    return repeats


__all__ = ["Plan", "TrackingBatch", "TrackingSettings", "check_settings"]
