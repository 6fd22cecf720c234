"""What CreateEventExportOperator, EventExportSensor and EventExportTrigger share about an export.

One implementation of: the export status vocabulary, reading one status response (completed →
result dict, failed → error, queued/processing → keep waiting), the poll-interval floor that keeps
pollers inside the status endpoint's rate limit, and the trigger's event payloads and how a worker
turns them back into a result or a typed error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from cometly_provider import exceptions as errors
from cometly_provider.exceptions import (
    CometlyConnectionError,
    CometlyError,
    CometlyExportFailedError,
    CometlyInputError,
    CometlyNotFoundError,
    CometlyRateLimitError,
    CometlyServerError,
)
from cometly_provider.utils.redaction import mask_presigned_url, redact_url, storable_download_url

if TYPE_CHECKING:
    from cometly_provider.hooks.cometly import CometlyHook
    from cometly_provider.hooks.rate_limit import RateLimitPolicy

#: Seconds between status polls unless the user says otherwise.
DEFAULT_POLL_INTERVAL = 30.0
#: Keys of the dict returned (XCom) for a completed export.
RESULT_KEYS: tuple[str, ...] = ("export_id", "status", "download_url", "expires_at", "completed_at")

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


class EventExportStatus(StrEnum):
    """Life cycle of an event export: ``queued`` → ``processing`` → ``completed`` | ``failed``."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (EventExportStatus.COMPLETED, EventExportStatus.FAILED)

    @classmethod
    def parse(cls, value: Any, export_id: int | str) -> EventExportStatus:
        try:
            return cls(value)
        except ValueError:
            raise CometlyError(
                f"Cometly export {export_id} reported an unknown status {value!r}; expected one of "
                f"{', '.join(s.value for s in cls)}"
            ) from None


# --- validation ------------------------------------------------------------------------------------


def check_export_id(value: Any, *, field: str = "export_id") -> int:
    """The integer export id from a rendered template, an XComArg value or the operator's result dict."""
    if isinstance(value, Mapping) and "export_id" in value:
        value = value["export_id"]
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()):
        raise CometlyInputError(
            f"{field}={value!r} is invalid: expected the integer export_id returned by "
            "CreateEventExportOperator (usually its XComArg, e.g. create_export.output)",
            field=field,
        )
    return int(text)


def check_seconds(value: Any, field: str, *, allow_zero: bool = False) -> float:
    """A positive number of seconds (a ``timedelta`` is accepted too)."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise CometlyInputError(f"{field}={value!r} is invalid: expected a number of seconds", field=field)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise CometlyInputError(f"{field}={value!r} is invalid: expected seconds {bound}", field=field)
    return float(value)


# --- poll interval ---------------------------------------------------------------------------------


def poll_interval_floor(policy: RateLimitPolicy) -> float:
    """Shortest interval at which one poller stays inside the status endpoint's limit.

    Taken from the hook's policy (30 per 60 s in production: 2 s), so a connection with a scaled
    window (tests) gets a scaled floor.
    """
    return policy.window_seconds / policy.limit_for("export_status")


def effective_poll_interval(
    requested: float, policy: RateLimitPolicy, log: LogLike, *, field: str = "poll_interval"
) -> float:
    """``requested`` raised to the floor, with a warning when that changes it."""
    floor = poll_interval_floor(policy)
    if requested < floor:
        log.warning(
            "%s=%.3g s would poll faster than Cometly's export status limit (%d per %.3g s) allows; "
            "using %.3g s",
            field,
            requested,
            policy.limit_for("export_status"),
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


def completed_result(export: Mapping[str, Any]) -> dict[str, Any]:
    """The result dict of a completed export, safe to store: ``download_url`` has no signature.

    The download operator fetches a freshly signed URL from ``export_id`` (which also spares it
    the 15-minute expiry of the URL this poll saw).
    """
    url = export.get("download_url")
    if not isinstance(url, str) or not url:
        raise CometlyError(
            f"Cometly export {export.get('export_id')} is completed but its status has no download_url"
        )
    mask_presigned_url(url)
    result = {key: export.get(key) for key in RESULT_KEYS}
    result["download_url"] = storable_download_url(url, export.get("export_id"))
    return result


def describe(result: Mapping[str, Any]) -> str:
    """A loggable summary of a result dict (the URL's signature redacted)."""
    url = result.get("download_url")
    return (
        f"export {result.get('export_id')} {result.get('status')} at {result.get('completed_at')}; "
        f"download URL {redact_url(url) if isinstance(url, str) else None} expires at "
        f"{result.get('expires_at')}"
    )


def interpret(export_id: int, export: Mapping[str, Any]) -> PollOutcome:
    """Read one Get Event Export response; a failed export raises with the API's message."""
    status = EventExportStatus.parse(export.get("status"), export_id)
    if status is EventExportStatus.COMPLETED:
        return PollOutcome(result=completed_result(export), status=status.value)
    if status is EventExportStatus.FAILED:
        message = export.get("message") or "(no message)"
        raise CometlyExportFailedError(
            f"Cometly export {export_id} failed: {message}", api_message=str(message)
        )
    return PollOutcome(status=status.value)


def not_found(export_id: int, err: CometlyNotFoundError) -> CometlyNotFoundError:
    return CometlyNotFoundError(
        f"Cometly export {export_id} does not exist in this Space (HTTP 404: {err.api_message}); "
        "check that export_id comes from CreateEventExportOperator using the same Cometly connection",
        status_code=404,
        api_message=err.api_message,
    )


def poll_export(hook: CometlyHook, export_id: int, log: LogLike) -> PollOutcome:
    """Poll once (sync). Transient failures after the hook's retries are reported, not raised."""
    try:
        export = hook.get_event_export(export_id)
    except CometlyNotFoundError as err:
        raise not_found(export_id, err) from None
    except TRANSIENT_ERRORS as err:
        log.warning("Cometly export %s: status poll failed (%s); will poll again", export_id, err)
        return PollOutcome(error=str(err))
    outcome = interpret(export_id, export)
    if not outcome.done:
        log.info("Cometly export %s is %s", export_id, outcome.status)
    return outcome


async def apoll_export(
    hook: CometlyHook, export_id: int, log: LogLike, *, deadline: float | None = None
) -> PollOutcome:
    """Poll once without blocking the event loop; same contract as :func:`poll_export`.

    ``deadline`` (epoch seconds): the hook's waits and retries end there.
    """
    try:
        export = await hook.aget_event_export(export_id, deadline=deadline)
    except CometlyNotFoundError as err:
        raise not_found(export_id, err) from None
    except TRANSIENT_ERRORS as err:
        log.warning("Cometly export %s: status poll failed (%s); will poll again", export_id, err)
        return PollOutcome(error=str(err))
    outcome = interpret(export_id, export)
    if not outcome.done:
        log.info("Cometly export %s is %s", export_id, outcome.status)
    return outcome


def timeout_message(export_id: int, limit: str, last: PollOutcome | None) -> str:
    """E.g. ``Cometly export 7 did not complete within 60 s; last status: processing``."""
    detail = ""
    if last is not None and last.status:
        detail = f"; last status: {last.status}"
    if last is not None and last.error:
        detail += f"; last poll failed: {last.error}"
    return f"Cometly export {export_id} did not complete {limit}{detail}"


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


def error_event(export_id: int, err: BaseException) -> dict[str, Any]:
    return {
        "status": "error",
        "export_id": export_id,
        "error_type": type(err).__name__,
        "message": str(err),
        "status_code": getattr(err, "status_code", None),
        "api_message": getattr(err, "api_message", None),
    }


def timeout_event(export_id: int, message: str, last: PollOutcome | None) -> dict[str, Any]:
    return {
        "status": "timeout",
        "export_id": export_id,
        "message": message,
        "last_status": last.status if last else None,
    }


def result_from_event(
    event: Mapping[str, Any] | None,
    export_id: Any,
    *,
    on_timeout: Callable[[str], BaseException],
) -> dict[str, Any]:
    """The trigger's event as the task's return value, or the typed error it stands for."""
    if not isinstance(event, Mapping):
        raise CometlyError(f"Cometly export {export_id}: the trigger sent no usable event ({event!r})")
    status = event.get("status")
    if status == "success" and isinstance(event.get("export"), Mapping):
        # Masked again here: the triggerer that saw the URL first is another process.
        return completed_result(event["export"])
    message = str(event.get("message") or f"Cometly export {export_id}: trigger reported {status!r}")
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
