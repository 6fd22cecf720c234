"""Typed errors raised by the Cometly provider.

Every failure the API can produce maps to one class under :class:`CometlyError`, so DAG authors can
``except CometlyAuthError`` instead of parsing messages. Messages never contain the API key or a
presigned-URL signature: callers pass already-redacted URLs.

Errors that no retry can fix (bad key, bad input, 4xx validation) derive from
``AirflowFailException`` so the task fails at once instead of burning its Airflow retries.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
)


class CometlyError(AirflowException):
    """Base class for every error raised by this provider."""

    def __init__(self, message: str, *, status_code: int | None = None, api_message: str | None = None):
        super().__init__(message)
        # Shadows AirflowException.status_code (an API-server concern) with the Cometly HTTP status.
        self.status_code = status_code  # type: ignore[assignment]
        self.api_message = api_message


class CometlyInputError(CometlyError, AirflowFailException, ValueError):
    """A parameter or payload was rejected client-side, before any request was sent."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class CometlyAuthError(CometlyError, AirflowFailException):
    """401 (missing or invalid API key) or 403 (no permission / inactive subscription)."""


class CometlyValidationError(CometlyError, AirflowFailException):
    """422 (or 400): the API rejected the request's content."""


class CometlyNotFoundError(CometlyError):
    """404: the resource (e.g. an export id) does not exist in this Space."""


class CometlyRateLimitError(CometlyError):
    """429 that outlasted the retries; ``retry_after`` is the server's last hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, api_message: str | None = None):
        super().__init__(message, status_code=429, api_message=api_message)
        self.retry_after = retry_after


class CometlyServerError(CometlyError):
    """5xx that outlasted the retries."""


class CometlyConnectionError(CometlyError):
    """The host could not be reached or the connection broke (after retries)."""


class CometlyDeadlineExceededError(CometlyConnectionError):
    """A call did not finish before the caller's deadline (e.g. a trigger's timeout)."""


class CometlyExportFailedError(CometlyError):
    """The export finished with status ``failed``."""


class CometlyExportSensorFailedError(CometlyExportFailedError, AirflowFailException):
    """A failed export seen by the sensor: also an ``AirflowFailException``, because a retry would only
    poll the same failed export again (a new export needs the upstream creation task to run again)."""


class CometlyExportTimeoutError(CometlyError):
    """The export did not complete before the sensor / operator timeout."""


class CometlyExportSensorTimeout(CometlyExportTimeoutError, AirflowSensorTimeout):
    """A sensor's timeout: also an ``AirflowSensorTimeout``, so Airflow fails it without retries
    (and ``soft_fail`` skips it) in every mode, deferrable included."""


class CometlyDownloadError(CometlyError):
    """The presigned download failed (expired URL, truncated or corrupt gzip stream)."""


class CometlyDownloadExpiredError(CometlyDownloadError):
    """The presigned URL answered 403: it has expired (or its signature is invalid)."""


class CometlyDownloadRangeIgnoredError(CometlyDownloadError):
    """A download resumed from a byte offset, but the server ignored ``Range`` and sent the whole file."""


class CometlyDownloadIntegrityError(CometlyDownloadError):
    """The downloaded bytes are not a complete, valid gzip stream (corrupt, truncated or trailing data)."""


class CometlyTaskKilled(BaseException):
    """The task was killed (SIGTERM, so Airflow ran ``on_kill``) while it was sending or writing.

    ``on_kill`` raises it in the main thread, so it unwinds whatever the task was doing through its
    clean-up (uploads aborted, queued events not sent). A ``BaseException``, so no ``except
    Exception`` on the way (urllib3, retry loops) swallows it; and deliberately not Airflow's
    ``AirflowTaskTerminated``, which the Task SDK treats as final: with this error a killed try
    (a pod eviction, a worker's warm shutdown) goes to ``up_for_retry`` while retries are left.
    """
