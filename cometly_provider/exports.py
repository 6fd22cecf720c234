"""The export life cycle shared by every export kind and every task that waits for or downloads one.

One implementation of: which export a task means (:class:`ExportRef`: kind + id, from an id, the
sensor's result or its XCom), the status vocabulary, reading one status response (completed →
result dict, failed → error, queued/processing → keep waiting) for the sync and async paths, the
poll-interval floor that keeps pollers inside the status endpoint's rate limit, deferring to the
trigger, the trigger's event payloads and how a worker turns them back into a result or a typed
error, and the download source that asks the API for a freshly signed URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from cometly_provider import exceptions as errors
from cometly_provider.checks import check_export_id
from cometly_provider.exceptions import (
    CometlyConnectionError,
    CometlyDeadlineExceededError,
    CometlyError,
    CometlyExportFailedError,
    CometlyInputError,
    CometlyNotFoundError,
    CometlyRateLimitError,
    CometlyServerError,
)
from cometly_provider.export_kinds import EVENTS, ExportKind, export_kind
from cometly_provider.utils.redaction import (
    export_of_redacted_url,
    is_redacted_url,
    mask_presigned_url,
    redact_url,
    storable_download_url,
)
from cometly_provider.utils.rendered import parse_rendered_literal

if TYPE_CHECKING:
    from cometly_provider.hooks.cometly import CometlyHook, DownloadStream
    from cometly_provider.hooks.rate_limit import RateLimitPolicy

#: Seconds between status polls unless the user says otherwise.
DEFAULT_POLL_INTERVAL = 30.0
#: Keys of the dict returned (XCom) for a completed export.
RESULT_KEYS: tuple[str, ...] = ("export_id", "kind", "status", "download_url", "expires_at", "completed_at")
#: Extra time a deferral timeout gives the trigger to report its own, clearer timeout event.
DEFER_TIMEOUT_GRACE_S = 60.0

# Failures worth outliving while the timeout allows: the hook has already retried them, and a
# status poll is read-only, so waiting for the next poll is always safe.
TRANSIENT_ERRORS: tuple[type[CometlyError], ...] = (
    CometlyServerError,
    CometlyConnectionError,
    CometlyRateLimitError,
)


class LogLike(Protocol):
    """What is needed of a logger (stdlib, Airflow's task logger or structlog)."""

    def info(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any: ...

    def warning(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any: ...


class ExportStatus(StrEnum):
    """Life cycle of an export: ``queued`` → ``processing`` → ``completed`` | ``failed``."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (ExportStatus.COMPLETED, ExportStatus.FAILED)

    @classmethod
    def parse(cls, value: Any, export: ExportRef | int | str) -> ExportStatus:
        try:
            return cls(value)
        except ValueError:
            label = export.label if isinstance(export, ExportRef) else f"Cometly export {export}"
            raise CometlyError(
                f"{label} reported an unknown status {value!r}; expected one of "
                f"{', '.join(s.value for s in cls)}"
            ) from None


#: 0.1.0 name.
EventExportStatus = ExportStatus


# --- which export ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportRef:
    """One export: its kind and id. What travels between tasks instead of a signed URL."""

    kind: ExportKind
    export_id: int

    @property
    def label(self) -> str:
        """E.g. ``Cometly contacts export 42``: how every message names the export."""
        return f"Cometly {self.kind.noun} {self.export_id}"

    @classmethod
    def of(cls, kind: str | ExportKind, export_id: Any, *, field: str = "export_id") -> ExportRef:
        resolved = export_kind(kind)
        return cls(resolved, check_export_id(export_id, field=field, source=resolved.create_operator))

    @classmethod
    def parse(cls, value: Any, *, kind: str | ExportKind | None = None, field: str = "export") -> ExportRef:
        """The export ``value`` stands for: a sensor/create result dict (also rendered as text), an
        id, or a stored download URL (which names its export). ``kind`` applies when ``value`` does
        not say; a result's own kind wins over the default but must not contradict an explicit one.
        """
        value = as_mapping(value)
        carried_kind: str | None = None
        if isinstance(value, Mapping):
            if value.get("export_id") is None:
                source = export_kind(kind).create_operator if kind is not None else "the create operator"
                raise CometlyInputError(  # keys only: the dict may hold a signed URL
                    f"{field}=<a dict with keys {sorted(map(str, value))}> is invalid: expected the "
                    f"integer export_id returned by {source}, or the sensor's result",
                    field=field,
                )
            carried_kind = value.get("kind") if isinstance(value.get("kind"), str) else None
            value = value["export_id"]
        elif isinstance(value, str) and is_redacted_url(value.strip()):
            carried, carried_kind = export_of_redacted_url(value.strip())
            if carried is None:
                raise CometlyInputError(
                    f"{field}={redact_url(value.strip())!r} has its signature redacted and names no "
                    "export: pass the sensor's whole result, or export_id and kind",
                    field=field,
                )
            value = carried
        resolved = export_kind(kind) if kind is not None else None
        if carried_kind is not None:
            carried_resolved = export_kind(carried_kind, field=f"{field}['kind']")
            if resolved is not None and carried_resolved is not resolved:
                raise CometlyInputError(
                    f"kind={resolved.name!r} is invalid for {field}: it is a {carried_resolved.noun}",
                    field="kind",
                )
            resolved = carried_resolved
        return cls.of(resolved or EVENTS, value, field=field)


def as_mapping(value: object) -> object:
    """A result dict also when a template rendered it as text (no native rendering)."""
    if not isinstance(value, str) or not value.strip().startswith("{") or not value.strip().endswith("}"):
        return value
    try:
        parsed = parse_rendered_literal(value.strip())
    except ValueError:
        return value
    return parsed if isinstance(parsed, Mapping) else value


# --- poll interval ---------------------------------------------------------------------------------


def poll_interval_floor(policy: RateLimitPolicy, kind: ExportKind = EVENTS) -> float:
    """Shortest interval at which one poller stays inside the status endpoint's limit.

    Taken from the hook's policy (30 per 60 s in production: 2 s), so a connection with a scaled
    window (tests) gets a scaled floor.
    """
    return policy.window_seconds / policy.limit_for(kind.status_endpoint)


def effective_poll_interval(
    requested: float,
    policy: RateLimitPolicy,
    log: LogLike,
    *,
    kind: ExportKind = EVENTS,
    field: str = "poll_interval",
) -> float:
    """``requested`` raised to the floor, with a warning when that changes it."""
    floor = poll_interval_floor(policy, kind)
    if requested < floor:
        log.warning(
            "%s=%.3g s would poll faster than Cometly's %s status limit (%d per %.3g s) allows; using %.3g s",
            field,
            requested,
            kind.noun,
            policy.limit_for(kind.status_endpoint),
            policy.window_seconds,
            floor,
        )
        return floor
    return requested


# --- one status response ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PollOutcome:
    """One poll: ``result`` once completed; otherwise the status seen, or the transient error met."""

    result: dict[str, Any] | None = None
    status: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def after(self, previous: PollOutcome | None) -> PollOutcome:
        """This poll as the latest news: a failed poll keeps the status seen before it, and a poll
        cut short by the caller's deadline (no status, no error) is no news at all."""
        if self.status is None and self.error is None:
            return previous or self
        return PollOutcome(status=self.status or (previous.status if previous else None), error=self.error)


def completed_result(ref: ExportRef, export: Mapping[str, Any]) -> dict[str, Any]:
    """The result dict of a completed export, safe to store: ``download_url`` has no signature.

    The download operator fetches a freshly signed URL from the export (which also spares it the
    15-minute expiry of the URL this poll saw).
    """
    url = export.get("download_url")
    if not isinstance(url, str) or not url:
        raise CometlyError(f"{ref.label} is completed but its status has no download_url")
    mask_presigned_url(url)
    result = {key: export.get(key) for key in RESULT_KEYS}
    result.update(export_id=ref.export_id, kind=ref.kind.name)
    result["download_url"] = storable_download_url(url, ref.export_id, ref.kind.name)
    return result


def describe(result: Mapping[str, Any]) -> str:
    """A loggable summary of a result dict (the URL's signature redacted)."""
    url = result.get("download_url")
    return (
        f"{result.get('kind', 'events')} export {result.get('export_id')} {result.get('status')} at "
        f"{result.get('completed_at')}; download URL {redact_url(url) if isinstance(url, str) else None} "
        f"expires at {result.get('expires_at')}"
    )


def interpret(ref: ExportRef, export: Mapping[str, Any]) -> PollOutcome:
    """Read one status response; a failed export raises with the API's message."""
    status = ExportStatus.parse(export.get("status"), ref)
    if status is ExportStatus.COMPLETED:
        return PollOutcome(result=completed_result(ref, export), status=status.value)
    if status is ExportStatus.FAILED:
        message = export.get("message") or "(no message)"
        raise CometlyExportFailedError(f"{ref.label} failed: {message}", api_message=str(message))
    return PollOutcome(status=status.value)


def _poll_failed(ref: ExportRef, err: CometlyError, log: LogLike) -> PollOutcome:
    """A poll that raised: transient failures become an outcome, the rest propagate."""
    if isinstance(err, CometlyNotFoundError):
        raise CometlyNotFoundError(
            f"{ref.label} does not exist in this Space (HTTP 404: {err.api_message}); check that "
            f"export_id comes from {ref.kind.create_operator} using the same Cometly connection",
            status_code=404,
            api_message=err.api_message,
        ) from None
    if isinstance(err, CometlyDeadlineExceededError):
        return PollOutcome()  # the caller's time is up: no news, and no failure of the API
    if isinstance(err, TRANSIENT_ERRORS):
        log.warning("%s: status poll failed (%s); will poll again", ref.label, err)
        return PollOutcome(error=str(err))
    raise err


def _poll_read(ref: ExportRef, export: Mapping[str, Any], log: LogLike) -> PollOutcome:
    outcome = interpret(ref, export)
    if not outcome.done:
        log.info("%s is %s", ref.label, outcome.status)
    return outcome


def poll_export(hook: CometlyHook, ref: ExportRef, log: LogLike) -> PollOutcome:
    """Poll once (sync). Transient failures after the hook's retries are reported, not raised."""
    try:
        export = hook.get_export(ref.kind, ref.export_id)
    except CometlyError as err:
        return _poll_failed(ref, err, log)
    return _poll_read(ref, export, log)


async def apoll_export(
    hook: CometlyHook, ref: ExportRef, log: LogLike, *, deadline: float | None = None
) -> PollOutcome:
    """:func:`poll_export` without blocking the event loop, never outliving ``deadline`` (epoch s)."""
    try:
        export = await hook.aget_export(ref.kind, ref.export_id, deadline=deadline)
    except CometlyError as err:
        return _poll_failed(ref, err, log)
    return _poll_read(ref, export, log)


def timeout_message(ref: ExportRef, limit: str, last: PollOutcome | None) -> str:
    """E.g. ``Cometly event export 7 did not complete within 60 s; last status: processing``."""
    detail = ""
    if last is not None and last.status:
        detail = f"; last status: {last.status}"
    if last is not None and last.error:
        detail += f"; last poll failed: {last.error}"
    return f"{ref.label} did not complete {limit}{detail}"


# --- deferring -------------------------------------------------------------------------------------


def defer_until_complete(
    task: Any,
    ref: ExportRef,
    *,
    timeout: float,
    poll_interval: float,
    cometly_conn_id: str,
    hook_params: Mapping[str, Any],
) -> None:
    """Hand the wait to :class:`~cometly_provider.triggers.event_export.ExportTrigger` (raises
    ``TaskDeferred``; the task resumes in ``execute_complete``).

    The trigger's deadline is wall-clock: it may run in another triggerer process or host. The
    deferral's own timeout is later by a grace period, so that the trigger's clearer, typed
    timeout event normally arrives first.
    """
    from cometly_provider.triggers.event_export import ExportTrigger

    task.log.info("Deferring until %s completes", ref.label)
    task.defer(
        trigger=ExportTrigger(
            export_id=ref.export_id,
            kind=ref.kind.name,
            end_time=time.time() + timeout,
            cometly_conn_id=cometly_conn_id,
            poll_interval=poll_interval,
            hook_params=dict(hook_params),
        ),
        method_name="execute_complete",
        timeout=timedelta(seconds=timeout + max(DEFER_TIMEOUT_GRACE_S, 2 * poll_interval)),
    )


# --- trigger events --------------------------------------------------------------------------------

# Error types an event may name; anything else comes back as a plain CometlyError.
_EVENT_ERRORS: dict[str, type[CometlyError]] = {
    cls.__name__: cls
    for cls in (
        errors.CometlyExportFailedError,
        errors.CometlyNotFoundError,
        errors.CometlyAuthError,
        errors.CometlyValidationError,
        errors.CometlyRateLimitError,
        errors.CometlyServerError,
        errors.CometlyConnectionError,
        errors.CometlyError,
    )
}


def success_event(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": "success", "export": dict(result)}


def error_event(ref: ExportRef, err: BaseException) -> dict[str, Any]:
    return {
        "status": "error",
        "export_id": ref.export_id,
        "kind": ref.kind.name,
        "error_type": type(err).__name__,
        "message": str(err),
        "status_code": getattr(err, "status_code", None),
        "api_message": getattr(err, "api_message", None),
    }


def timeout_event(ref: ExportRef, message: str, last: PollOutcome | None) -> dict[str, Any]:
    return {
        "status": "timeout",
        "export_id": ref.export_id,
        "kind": ref.kind.name,
        "message": message,
        "last_status": last.status if last else None,
    }


def result_from_event(
    event: Mapping[str, Any] | None,
    ref: ExportRef | None,
    *,
    on_timeout: Callable[[str], BaseException],
) -> dict[str, Any]:
    """The trigger's event as the task's return value, or the typed error it stands for."""
    label = ref.label if ref is not None else "Cometly export"
    if not isinstance(event, Mapping):
        raise CometlyError(f"{label}: the trigger sent no usable event ({event!r})")
    status = event.get("status")
    if status == "success" and isinstance(event.get("export"), Mapping):
        export = event["export"]
        done = ref or ExportRef.parse(export, field="event['export']")
        # Masked again here: the triggerer that saw the URL first is another process.
        return completed_result(done, export)
    message = str(event.get("message") or f"{label}: trigger reported {status!r}")
    if status == "timeout":
        raise on_timeout(message)
    if event.get("error_type") == "CometlyInputError":
        raise CometlyInputError(message, field="export_id")
    cls = _EVENT_ERRORS.get(str(event.get("error_type")), CometlyError)
    code = event.get("status_code")
    api_message = event.get("api_message") if isinstance(event.get("api_message"), str) else None
    if cls is errors.CometlyRateLimitError:
        raise errors.CometlyRateLimitError(message, api_message=api_message)
    raise cls(message, status_code=code if isinstance(code, int) else None, api_message=api_message)


# --- download sources ------------------------------------------------------------------------------


class ExportDownloadSource:
    """A completed export as the transfer sees it: asked for a freshly signed URL when needed.

    The URL never leaves this object (no XCom, no operator attribute); each status poll signs a
    new one, so a refresh after an expiry or a cut costs one status request.
    """

    def __init__(self, hook: CometlyHook, ref: ExportRef) -> None:
        self.hook = hook
        self.ref = ref
        self.can_refresh = True
        self.description = ref.label

    def fresh_url(self) -> str:
        status = self.hook.get_export(self.ref.kind, self.ref.export_id)
        state = status.get("status")
        if state == "failed":
            raise CometlyExportFailedError(
                f"{self.ref.label} failed: {status.get('message') or '(no message)'}"
            )
        url = status.get("download_url")
        if state != "completed" or not isinstance(url, str) or not url:
            raise CometlyInputError(
                f"export={self.ref.export_id!r} is invalid: {self.ref.label} is {state!r}, not 'completed'; "
                "wait for it with the export sensor before downloading",
                field="export_id",
            )
        return url

    def open(self, url: str, offset: int) -> AbstractContextManager[DownloadStream]:
        return self.hook.open_download(url, offset=offset)


class PresignedUrlSource:
    """A presigned URL the user already has: it cannot be renewed once it expires."""

    def __init__(self, hook: CometlyHook, url: str) -> None:
        mask_presigned_url(url)
        self.hook = hook
        self._url = url
        self.can_refresh = False
        self.description = redact_url(url)

    def fresh_url(self) -> str:
        return self._url

    def open(self, url: str, offset: int) -> AbstractContextManager[DownloadStream]:
        return self.hook.open_download(url, offset=offset)
