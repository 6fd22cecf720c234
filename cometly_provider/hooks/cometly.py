"""CometlyHook: the one place that talks HTTP to Cometly.

It owns the connection settings, a pooled ``requests.Session``, authentication, client-side rate
limits (per Space and endpoint, see :mod:`cometly_provider.hooks.rate_limit`), retries with
tenacity, and the mapping of every failure to a typed :class:`~cometly_provider.exceptions.CometlyError`.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import platform
import random
import time
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests
import tenacity
from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook, mask_secret
from requests.adapters import HTTPAdapter

from cometly_provider import __version__
from cometly_provider.checks import check_export_id
from cometly_provider.exceptions import (
    CometlyAuthError,
    CometlyConnectionError,
    CometlyDeadlineExceededError,
    CometlyDownloadError,
    CometlyDownloadExpiredError,
    CometlyDownloadRangeIgnoredError,
    CometlyError,
    CometlyInputError,
    CometlyNotFoundError,
    CometlyRateLimitError,
    CometlyServerError,
    CometlyValidationError,
)
from cometly_provider.export_kinds import EVENTS, ExportKind, export_kind
from cometly_provider.hooks.connection_fields import (
    DEFAULT_HOST,
    UI_FIELD_BEHAVIOUR,
    connection_form_widgets,
)
from cometly_provider.hooks.rate_limit import (
    DEFAULT_RATE_LIMIT_TIMEOUT,
    DEFAULT_WINDOW_SECONDS,
    EndpointRateLimiter,
    RateLimitPolicy,
    get_rate_limiter,
    space_key,
)
from cometly_provider.utils.redaction import mask_presigned_url, redact_url
from cometly_provider.validation import validate_track_event

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection

API_PREFIX = "/public-api/v1"
# The UI's Test button waits for test_connection: one attempt, bounded, instead of the retry policy.
TEST_CONNECTION_TIMEOUT = 4.0
TRACK_PATH = "/events/track"

# Status codes that no retry can fix.
_FATAL = {400, 401, 403, 404, 422}


def _airflow_version() -> str:
    try:
        from airflow import __version__ as airflow_version

        return str(airflow_version)
    except ImportError:  # pragma: no cover - airflow is a hard dependency
        return "unknown"


def user_agent() -> str:
    return (
        f"airflow-provider-cometly/{__version__} apache-airflow/{_airflow_version()} "
        f"python/{platform.python_version()} requests/{requests.__version__}"
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried.

    ``max_attempts`` counts the first try and every failure except 429: a 429 is a wait, not a
    failure, and ``rate_limit_timeout`` bounds the time one request spends waiting for the rate
    limit instead. ``max_wait`` caps every single wait, a ``Retry-After`` included.
    """

    max_attempts: int = 5
    min_wait: float = 1.0
    max_wait: float = 60.0
    rate_limit_timeout: float = DEFAULT_RATE_LIMIT_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"retry max_attempts={self.max_attempts!r} must be >= 1")
        if self.min_wait < 0 or self.max_wait < self.min_wait:
            raise ValueError(f"retry waits must satisfy 0 <= min_wait <= max_wait, got {self}")
        if not self.rate_limit_timeout > 0:
            raise ValueError(f"rate_limit_timeout={self.rate_limit_timeout!r} must be > 0 (seconds)")


class _RetryableConnectionError(CometlyConnectionError):
    """A transport failure, remembering whether the request may have reached the server."""

    def __init__(self, message: str, *, maybe_processed: bool):
        super().__init__(message)
        self.maybe_processed = maybe_processed


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to exponential backoff


def _parse_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _api_message(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        payload = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return str(payload["message"])
    return text.strip()[:500]


def error_for_status(status: int, where: str, message: str, retry_after: float | None = None) -> CometlyError:
    """The typed error for an HTTP failure status of the Cometly API."""
    text = f"Cometly {where} failed with HTTP {status}: {message or '(no message)'}"
    if status in (401, 403):
        hint = " Check the API key in the Cometly connection." if status == 401 else ""
        return CometlyAuthError(text + hint, status_code=status, api_message=message)
    if status == 404:
        return CometlyNotFoundError(text, status_code=status, api_message=message)
    if status in (400, 422):
        return CometlyValidationError(text, status_code=status, api_message=message)
    if status == 429:
        return CometlyRateLimitError(text, retry_after=retry_after, api_message=message)
    if status >= 500:
        return CometlyServerError(text, status_code=status, api_message=message)
    return CometlyError(text, status_code=status, api_message=message)


class CometlyHook(BaseHook):
    """
    Interact with the Cometly public API.

    :param cometly_conn_id: Airflow connection of type ``cometly`` (API key in the password field).
    :param timeout: read timeout in seconds; overrides the connection extra ``timeout``.
    :param max_attempts: attempts per request (first try included) for retryable failures.
    :param retry_min_wait: first exponential back-off wait in seconds.
    :param retry_max_wait: cap in seconds on any wait, including a server's ``Retry-After``.
    :param rate_limit_timeout: seconds one request may wait for the rate limit (client-side holds
        and 429s together; 429s do not count against ``max_attempts``), default 1800.
    :param rate_limits: per-endpoint overrides of the documented limits, e.g. ``{"track": 500}``.
    :param rate_limit_window: length of the rate-limit window in seconds (60 in production).
    :param rate_limiting: set ``False`` to disable the client-side limiter (the API still limits).
    :param pool_size: HTTP connections kept per host; size it to the number of sending threads.
    """

    conn_name_attr = "cometly_conn_id"
    default_conn_name = "cometly_default"
    conn_type = "cometly"
    hook_name = "Cometly"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return copy.deepcopy(UI_FIELD_BEHAVIOUR)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extras' form fields for Airflow < 3.2 (3.2+ reads ``conn-fields`` instead)."""
        return connection_form_widgets()

    def __init__(
        self,
        cometly_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry_min_wait: float | None = None,
        retry_max_wait: float | None = None,
        rate_limit_timeout: float | None = None,
        rate_limits: Mapping[str, int] | None = None,
        rate_limit_window: float | None = None,
        rate_limiting: bool | None = None,
        pool_size: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cometly_conn_id = cometly_conn_id
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._retry_min_wait = retry_min_wait
        self._retry_max_wait = retry_max_wait
        self._rate_limit_timeout = rate_limit_timeout
        self._rate_limits = dict(rate_limits) if rate_limits is not None else None
        self._rate_limit_window = rate_limit_window
        self._rate_limiting = rate_limiting
        self.pool_size = pool_size

    # --- configuration -------------------------------------------------------------------------

    @cached_property
    def connection(self) -> Connection:
        return self.get_connection(self.cometly_conn_id)

    @cached_property
    def _extras(self) -> dict[str, Any]:
        # The connection form stores an emptied field as null (or ""): both mean "the default".
        extras = {k: v for k, v in (self.connection.extra_dejson or {}).items() if v not in (None, "")}
        if isinstance(extras.get("rate_limits"), str):  # a text field before Airflow 3.2
            try:
                extras["rate_limits"] = json.loads(extras["rate_limits"])
            except ValueError:
                raise CometlyInputError(
                    f"Cometly connection {self.cometly_conn_id!r}: rate_limits={extras['rate_limits']!r} "
                    'is not JSON; expected an object such as {"track": 500}',
                    field="rate_limits",
                ) from None
        return extras

    @cached_property
    def api_key(self) -> str:
        key = self.connection.password
        if not key:
            raise CometlyInputError(
                f"Cometly connection {self.cometly_conn_id!r} has no API key: put it in the password field",
                field="password",
            )
        mask_secret(key)
        return str(key)

    @cached_property
    def host(self) -> str:
        return _normalize_host(self.connection.host, self.connection.port)

    @property
    def api_base(self) -> str:
        return self.host + API_PREFIX

    @cached_property
    def timeout(self) -> tuple[float, float]:
        read = self._timeout if self._timeout is not None else float(self._extras.get("timeout", 60))
        connect = float(self._extras.get("connect_timeout", min(10.0, read)))
        return connect, read

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        extras = self._extras
        try:
            return RetryPolicy(
                max_attempts=_first(self._max_attempts, extras.get("max_attempts"), 5, cast=int),
                min_wait=_first(self._retry_min_wait, extras.get("retry_min_wait"), 1.0, cast=float),
                max_wait=_first(self._retry_max_wait, extras.get("retry_max_wait"), 60.0, cast=float),
                rate_limit_timeout=_first(
                    self._rate_limit_timeout,
                    extras.get("rate_limit_timeout"),
                    DEFAULT_RATE_LIMIT_TIMEOUT,
                    cast=float,
                ),
            )
        except ValueError as err:
            raise CometlyInputError(f"Cometly connection {self.cometly_conn_id!r}: {err}") from err

    @cached_property
    def rate_limit_policy(self) -> RateLimitPolicy:
        extras = self._extras
        # Explicit overrides only: the documented table is the limiter's starting assumption,
        # X-RateLimit-Limit corrects it, and an explicit limit caps what is learnt.
        limits = dict(extras.get("rate_limits") or {})
        limits.update(self._rate_limits or {})
        try:
            return RateLimitPolicy(
                limits=limits,
                window_seconds=_first(
                    self._rate_limit_window,
                    extras.get("rate_limit_window_seconds"),
                    DEFAULT_WINDOW_SECONDS,
                    cast=float,
                ),
                enabled=_first(self._rate_limiting, extras.get("rate_limiting"), True, cast=bool),
                backend=str(extras.get("rate_limit_backend", "local")),  # type: ignore[arg-type]
                redis_conn_id=extras.get("redis_conn_id", "redis_default"),
            )
        except ValueError as err:
            raise CometlyInputError(f"Cometly connection {self.cometly_conn_id!r}: {err}") from err

    @cached_property
    def space(self) -> str:
        return space_key(self.host, self.api_key)

    @cached_property
    def space_timezone(self) -> dt.tzinfo:
        """The Space's timezone (connection extra ``timezone``, an IANA name; default UTC).

        A Cometly day is a day in this timezone: exports of "yesterday" are cut by it.
        """
        name = self._extras.get("timezone") or "UTC"
        try:
            return zoneinfo.ZoneInfo(str(name).strip())
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise CometlyInputError(
                f"Cometly connection {self.cometly_conn_id!r}: timezone={name!r} is invalid: expected "
                "an IANA timezone name such as 'UTC' or 'America/Los_Angeles' (the Space's timezone)",
                field="timezone",
            ) from None

    def rate_limiter(self, endpoint: str) -> EndpointRateLimiter | None:
        return get_rate_limiter(self.space, endpoint, self.rate_limit_policy)

    def check_settings(self) -> None:
        """Resolve every connection setting now, so that a mistake fails before the first request.

        Raises :class:`CometlyInputError` naming the connection and the field at fault (missing
        connection or API key, a host that is not an http(s) URL, extras that are not a JSON object
        or hold a bad value). Operators call it first, so ``allow_failures`` cannot hide it.
        """
        conn_id = self.cometly_conn_id
        try:
            connection = self.connection
        except AirflowNotFoundException:
            raise CometlyInputError(
                f"Cometly connection {conn_id!r} is not defined: create it (type cometly, API key in "
                "the password field)",
                field="cometly_conn_id",
            ) from None
        raw_extra = (connection.extra or "").strip()
        try:
            extras = json.loads(raw_extra) if raw_extra else {}
        except ValueError:
            extras = None
        if not isinstance(extras, dict):
            raise CometlyInputError(
                f"Cometly connection {conn_id!r}: extra is not a JSON object", field="extra"
            )
        self.api_key  # noqa: B018 - raises, naming the connection, when the key is missing
        parts = urlsplit(self.host)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in self.host):
            raise CometlyInputError(
                f"Cometly connection {conn_id!r}: host={connection.host!r} is not an http(s) URL "
                f"(leave it empty for {DEFAULT_HOST})",
                field="host",
            )
        checks: tuple[tuple[str, Callable[[], Any]], ...] = (
            ("extra timeout / connect_timeout", lambda: self.timeout),
            (
                "extra max_attempts / retry_min_wait / retry_max_wait / rate_limit_timeout",
                lambda: self.retry_policy,
            ),
            (
                "extra rate_limits / rate_limit_window_seconds / rate_limit_backend / redis_conn_id",
                lambda: self.rate_limit_policy,
            ),
            ("extra timezone", lambda: self.space_timezone),
        )
        for name, resolve in checks:
            try:
                value = resolve()
            except CometlyInputError as err:
                raise CometlyInputError(str(err), field=name.split()[1]) from None
            except (TypeError, ValueError, AttributeError) as err:
                raise CometlyInputError(
                    f"Cometly connection {conn_id!r}: {name} is invalid: {err}", field=name.split()[1]
                ) from None
            if name.startswith("extra timeout") and min(value) <= 0:
                raise CometlyInputError(
                    f"Cometly connection {conn_id!r}: {name} must be > 0 seconds, got {value!r}",
                    field="timeout",
                )

    # --- HTTP ------------------------------------------------------------------------------------

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": user_agent(),
        }

    @cached_property
    def session(self) -> requests.Session:
        """Pooled session with the Cometly auth headers; built on first use."""
        session = requests.Session()
        session.headers.update(self.headers)
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    @cached_property
    def _download_session(self) -> requests.Session:
        # Separate on purpose: the presigned URL goes to S3, which must never see the API key.
        session = requests.Session()
        session.headers.update({"User-Agent": user_agent(), "Accept-Encoding": "identity"})
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def close(self) -> None:
        for name in ("session", "_download_session"):
            session = self.__dict__.pop(name, None)
            if session is not None:
                session.close()

    def _retrying(
        self,
        *,
        where: str,
        may_repeat: bool,
        limiter: EndpointRateLimiter | None = None,
        rate_limit_deadline: float | None = None,
        policy: RetryPolicy | None = None,
    ) -> tenacity.Retrying:
        return tenacity.Retrying(
            **self._retry_kwargs(
                where=where,
                may_repeat=may_repeat,
                limiter=limiter,
                rate_limit_deadline=rate_limit_deadline,
                policy=policy,
            )
        )

    def _rate_limit_deadline(self, deadline: float | None = None) -> float:
        """When one request starting now stops waiting for the rate limit (``time.monotonic()``).

        ``deadline`` is a caller's own limit (e.g. a trigger's), also monotonic.
        """
        budget_end = time.monotonic() + self.retry_policy.rate_limit_timeout
        return budget_end if deadline is None else min(budget_end, deadline)

    def _retry_kwargs(
        self,
        *,
        where: str,
        may_repeat: bool,
        limiter: EndpointRateLimiter | None = None,
        rate_limit_deadline: float | None = None,
        deadline: float | None = None,
        policy: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """tenacity arguments shared by the sync and async paths.

        ``may_repeat`` says whether sending the request twice is harmless. When it is not (a track
        call without ``idempotency_key``), only failures that prove the server did not process the
        request are retried: 429, and connections that were never established.

        A 429 is a wait, not a failure: it does not count against ``max_attempts``; the request
        keeps waiting until ``rate_limit_deadline`` (:meth:`_rate_limit_deadline`). Each wait is
        capped at ``retry_max_wait``, ``Retry-After`` included; with a ``limiter`` the wait is the
        limiter's estimate of the server's reset (tighter than the whole-second ``Retry-After``)
        plus jitter. No wait at all runs past ``deadline`` (monotonic), a caller's hard limit.
        ``policy`` overrides the hook's own retry policy.
        """
        policy = policy or self.retry_policy
        if rate_limit_deadline is None:
            rate_limit_deadline = self._rate_limit_deadline(deadline)
        exponential = tenacity.wait_exponential_jitter(
            initial=policy.min_wait, max=policy.max_wait, jitter=policy.min_wait
        )
        failures = 0  # attempts that count against max_attempts: all but 429s

        def should_retry(exc: BaseException) -> bool:
            if isinstance(exc, CometlyRateLimitError):
                return True
            if isinstance(exc, _RetryableConnectionError):
                return may_repeat or not exc.maybe_processed
            return isinstance(exc, CometlyServerError) and may_repeat

        def count_failure(state: tenacity.RetryCallState) -> None:
            nonlocal failures
            if not isinstance(_exception(state), CometlyRateLimitError):
                failures += 1

        def wait(state: tenacity.RetryCallState) -> float:
            exc = _exception(state)
            if isinstance(exc, CometlyRateLimitError) and exc.retry_after is not None:
                if limiter is not None:
                    hint = limiter.retry_wait(exc.retry_after)
                else:
                    # Never earlier than the server asked; jitter spreads processes sharing the Space.
                    hint = exc.retry_after + random.uniform(0, min(1.0, 0.1 * exc.retry_after + 0.05))
                return min(hint, policy.max_wait)
            return float(exponential(state))

        def stop(state: tenacity.RetryCallState) -> bool:
            resume_at = time.monotonic() + (state.upcoming_sleep or 0.0)
            if deadline is not None and resume_at > deadline:
                return True
            if isinstance(_exception(state), CometlyRateLimitError):
                return resume_at >= rate_limit_deadline
            return failures >= policy.max_attempts

        def log_retry(state: tenacity.RetryCallState) -> None:
            exc = _exception(state)
            sleep = state.next_action.sleep if state.next_action else 0.0
            if isinstance(exc, CometlyRateLimitError):
                left = rate_limit_deadline - time.monotonic()
                self.log.info(
                    "Cometly %s: rate limited (%s); waiting %.1f s (429s do not count as attempts; "
                    "this request waits up to %.0f s more for the limit)",
                    where,
                    exc,
                    sleep,
                    left,
                )
                return
            self.log.warning(
                "Cometly %s: attempt %d/%d failed (%s); retrying in %.1f s",
                where,
                failures,
                policy.max_attempts,
                exc,
                sleep,
            )

        return {
            "stop": stop,
            "wait": wait,
            "retry": tenacity.retry_if_exception(should_retry),
            "after": count_failure,
            "before_sleep": log_retry,
            "reraise": True,
        }

    def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        may_repeat: bool = True,
        policy: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        where = f"{method} {path}"
        limiter = self.rate_limiter(endpoint)
        url = self.api_base + path
        rate_limit_deadline = self._rate_limit_deadline()
        for attempt in self._retrying(
            where=where,
            may_repeat=may_repeat,
            limiter=limiter,
            rate_limit_deadline=rate_limit_deadline,
            policy=policy,
        ):
            with attempt:
                sent_at = None
                if limiter is not None:
                    sent_at = limiter.acquire(
                        deadline=rate_limit_deadline, max_hold=(policy or self.retry_policy).max_wait
                    )
                try:
                    response = self.session.request(method, url, json=body, timeout=self.timeout)
                except requests.RequestException as err:
                    raise _transport_error(where, err) from None
                return self._handle(response, where, limiter, sent_at)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def _handle(
        self,
        response: requests.Response,
        where: str,
        limiter: EndpointRateLimiter | None,
        sent_at: float | None = None,
    ) -> dict[str, Any]:
        return self._read_response(
            response.status_code, response.headers, response.content, where, limiter, sent_at
        )

    def _read_response(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        where: str,
        limiter: EndpointRateLimiter | None,
        sent_at: float | None = None,
    ) -> dict[str, Any]:
        """One API response, from the sync or the async path: feed the limiter, raise or parse."""
        retry_after = _parse_retry_after(headers.get("Retry-After"))
        if limiter is not None:
            _observe(limiter, status, headers, retry_after, sent_at)
        if status >= 400:
            raise error_for_status(status, where, _api_message(body), retry_after)
        if not body:
            return {}
        try:
            payload = json.loads(body)
        except ValueError as err:
            raise CometlyError(
                f"Cometly {where} returned HTTP {status} with a body that is not JSON", status_code=status
            ) from err
        return payload if isinstance(payload, dict) else {"data": payload}

    # --- API -------------------------------------------------------------------------------------

    def track_event(self, payload: Mapping[str, Any], *, validate: bool = True) -> dict[str, Any]:
        """POST /events/track. Retried on 5xx/timeouts only when the payload has an ``idempotency_key``."""
        body = validate_track_event(payload) if validate else dict(payload)
        return self._call(
            "track", "POST", TRACK_PATH, body=body, may_repeat=bool(body.get("idempotency_key"))
        )

    #: Lower bound on attempts of a patient creation (each 429 waits out its ``Retry-After``).
    patient_create_attempts: int = 15

    def create_export(
        self, kind: str | ExportKind, *, patient: bool = False, **params: Any
    ) -> dict[str, Any]:
        """POST /<kind>/exports; returns ``{"export_id": int, "status": "queued"}``.

        The parameters are checked by the kind's validator first. Retried on 5xx and timeouts too:
        at worst that starts a second, identical export, which costs quota but cannot double-count.
        ``patient=True`` (the create operators) retries at least :attr:`patient_create_attempts`
        times with waits of up to one rate-limit window: creation is limited to 5 per minute per
        Space, so a backfill's creations wait out several full windows instead of failing on 429.
        """
        kind = export_kind(kind)
        body = kind.validate(params)
        policy = None
        if patient:
            own = self.retry_policy
            policy = RetryPolicy(
                max_attempts=max(own.max_attempts, self.patient_create_attempts),
                min_wait=own.min_wait,
                max_wait=max(own.max_wait, self.rate_limit_policy.window_seconds),
                rate_limit_timeout=own.rate_limit_timeout,
            )
        return self._call(kind.create_endpoint, "POST", kind.path, body=body, policy=policy)

    def get_export(self, kind: str | ExportKind, export_id: int | str) -> dict[str, Any]:
        """GET /<kind>/exports/{id}; a completed export carries a fresh ``download_url``."""
        kind = export_kind(kind)
        path = kind.status_path(check_export_id(export_id, source=kind.create_operator))
        return _masked(self._call(kind.status_endpoint, "GET", path))

    async def aget_export(
        self, kind: str | ExportKind, export_id: int | str, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """:meth:`get_export` for triggers: never blocks the event loop.

        ``deadline`` (wall-clock epoch seconds, like a trigger's ``end_time``) bounds the whole call:
        no rate-limit wait, retry back-off or request runs past it (when it comes first, the last
        error is raised), and a call still running at the deadline ends with
        :class:`CometlyDeadlineExceededError`, so a caller's own deadline is never outlived by a poll.
        """
        kind = export_kind(kind)
        path = kind.status_path(check_export_id(export_id, source=kind.create_operator))
        call = self._acall(kind.status_endpoint, "GET", path, deadline=deadline)
        if deadline is None:
            return _masked(await call)
        remaining = deadline - time.time()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return _masked(await call)
        except TimeoutError:
            raise CometlyDeadlineExceededError(
                f"Cometly GET {path}: no answer before the caller's deadline "
                f"({max(remaining, 0.0):.1f} s were left)"
            ) from None
        finally:
            call.close()  # never awaited when the deadline had already passed

    async def _acall(
        self, endpoint: str, method: str, path: str, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """The async twin of :meth:`_call` (same retries, limiter and response handling)."""
        import aiohttp
        from airflow.providers.common.compat.connection import get_async_connection

        if "connection" not in self.__dict__:
            self.__dict__["connection"] = await get_async_connection(self.cometly_conn_id, hook=self)
        where = f"{method} {path}"
        limiter = self.rate_limiter(endpoint)
        hard_deadline = None if deadline is None else time.monotonic() + (deadline - time.time())
        rate_limit_deadline = self._rate_limit_deadline(hard_deadline)
        connect, read = self.timeout
        async with aiohttp.ClientSession(headers=self.headers) as session:
            async for attempt in tenacity.AsyncRetrying(
                **self._retry_kwargs(
                    where=where,
                    may_repeat=True,
                    limiter=limiter,
                    rate_limit_deadline=rate_limit_deadline,
                    deadline=hard_deadline,
                )
            ):
                with attempt:
                    sent_at = None
                    if limiter is not None:
                        sent_at = await limiter.acquire_async(
                            deadline=rate_limit_deadline, max_hold=self.retry_policy.max_wait
                        )
                    total = None if hard_deadline is None else max(0.05, hard_deadline - time.monotonic())
                    client_timeout = aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read)
                    try:
                        async with session.request(
                            method, self.api_base + path, timeout=client_timeout
                        ) as response:
                            body = await response.read()
                    except (aiohttp.ClientError, TimeoutError) as err:
                        refused = isinstance(err, aiohttp.ClientConnectorError)
                        raise _RetryableConnectionError(
                            f"Cometly {where}: {type(err).__name__}: {err}", maybe_processed=not refused
                        ) from None
                    return self._read_response(
                        response.status, response.headers, body, where, limiter, sent_at
                    )
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    # 0.1.0 names, kept for DAGs and code that call them.
    def create_event_export(self, **params: Any) -> dict[str, Any]:
        """POST /events/exports: :meth:`create_export` of kind ``events``."""
        return self.create_export(EVENTS, **params)

    def get_event_export(self, export_id: int | str) -> dict[str, Any]:
        """GET /events/exports/{id}: :meth:`get_export` of kind ``events``."""
        return self.get_export(EVENTS, export_id)

    async def aget_event_export(
        self, export_id: int | str, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """Async GET /events/exports/{id}: :meth:`aget_export` of kind ``events``."""
        return await self.aget_export(EVENTS, export_id, deadline=deadline)

    @contextmanager
    def open_download(self, url: str, *, offset: int = 0) -> Iterator[DownloadStream]:
        """Open a presigned export URL for streaming, from byte ``offset``.

        The bytes are passed through untouched (no gzip decoding, no Cometly auth header). A 403
        raises :class:`CometlyDownloadExpiredError`; other failures are retried like API calls.
        """
        mask_presigned_url(url)
        safe_url = redact_url(url)
        where = f"download {safe_url}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response: requests.Response | None = None
        for attempt in self._retrying(where=where, may_repeat=True):
            with attempt:
                try:
                    response = self._download_session.get(
                        url, headers=headers, stream=True, timeout=self.timeout
                    )
                except requests.RequestException as err:
                    raise _transport_error(where, err) from None
                if response.status_code >= 400:
                    status, message = response.status_code, _api_message(response.content[:2000])
                    response.close()
                    if status == 403:
                        raise CometlyDownloadExpiredError(
                            f"Cometly export download {safe_url} answered HTTP 403: the presigned URL has "
                            "expired or is invalid; request a fresh one with get_export()",
                            status_code=403,
                        )
                    if status >= 500 or status == 429:
                        raise error_for_status(
                            status, where, message, _parse_retry_after(response.headers.get("Retry-After"))
                        )
                    raise CometlyDownloadError(
                        f"Cometly {where} failed with HTTP {status}", status_code=status
                    )
                if offset and response.status_code != 206:
                    response.close()
                    raise CometlyDownloadRangeIgnoredError(
                        f"Cometly {where}: asked for bytes from {offset} but the server ignored Range "
                        f"(HTTP {response.status_code})"
                    )
        assert response is not None
        try:
            yield DownloadStream(response, offset=offset, where=where)
        finally:
            response.close()

    def test_connection(self) -> tuple[bool, str]:
        """Check host and key with one read-only call (status of export 0) that creates nothing.

        The UI's Test button waits for this, so it is a single attempt bounded by
        ``TEST_CONNECTION_TIMEOUT`` rather than the full retry policy, and every failure says what
        to fix.
        """
        where = f"GET {EVENTS.status_path(0)}"
        try:
            host = self.host
            connect, read = self.timeout
            probe_timeout = (min(connect, TEST_CONNECTION_TIMEOUT), min(read, TEST_CONNECTION_TIMEOUT))
            try:
                response = self.session.request(
                    "GET", f"{self.api_base}{EVENTS.status_path(0)}", timeout=probe_timeout
                )
            except requests.RequestException as err:
                reason = type(err).__name__
                hint = ""
                if "://" not in (self.connection.host or "://"):
                    hint = (
                        f" The host has no scheme, so https:// was assumed; if the server speaks plain "
                        f"HTTP, write http://{self.connection.host} (in URI form: cometly://http://:KEY@host:port)."
                    )
                return False, (
                    f"Cannot reach Cometly at {host} ({reason}, gave up after one attempt of at most "
                    f"{TEST_CONNECTION_TIMEOUT:g} s): check the API host and port, and that this Airflow "
                    f"component can reach it.{hint}"
                )
            self._handle(response, where, None)
        except (CometlyNotFoundError, CometlyValidationError):
            pass  # the key was accepted; export 0 just does not exist
        except CometlyAuthError as err:
            return False, (
                f"Cometly at {self.host} rejected the API key (HTTP {err.status_code}): {err.api_message} "
                "Put the Space's API key in the API key field."
            )
        except CometlyError as err:
            return False, str(err)
        return True, f"Connected to Cometly at {self.host}; the API key is valid."


class DownloadStream:
    """An open presigned-URL response; iterate :meth:`iter_chunks` for the raw bytes."""

    def __init__(self, response: requests.Response, *, offset: int, where: str) -> None:
        self._response = response
        self.offset = offset
        self.where = where
        self.status_code = response.status_code
        self.etag = response.headers.get("ETag")
        length = _parse_int(response.headers.get("Content-Length"))
        self.content_length = length
        self.total_size = _total_size(response.headers.get("Content-Range"), offset, length)

    def iter_chunks(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Raw bytes as served; a broken connection raises :class:`CometlyDownloadError`."""
        try:
            yield from self._response.raw.stream(chunk_size, decode_content=False)
        except Exception as err:  # urllib3 raises several unrelated types for a cut stream
            raise CometlyDownloadError(
                f"Cometly {self.where}: connection broke mid-download ({type(err).__name__})"
            ) from None


def _exception(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _observe(
    limiter: EndpointRateLimiter,
    status: int,
    headers: Mapping[str, str],
    retry_after: float | None,
    sent_at: float | None,
) -> None:
    """Feed an answer's rate-limit headers to the limiter (one place for the sync and async paths)."""
    limiter.observe(
        _parse_int(headers.get("X-RateLimit-Remaining")),
        retry_after if status == 429 else None,
        limit=_parse_int(headers.get("X-RateLimit-Limit")),
        sent_at=sent_at,
    )


def _total_size(content_range: str | None, offset: int, length: int | None) -> int | None:
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    return offset + length if length is not None else None


def _transport_error(where: str, err: requests.RequestException) -> _RetryableConnectionError:
    # A refused or timed-out connect proves the request never reached the server.
    never_sent = isinstance(err, requests.exceptions.ConnectTimeout) or (
        isinstance(err, requests.exceptions.ConnectionError)
        and "NewConnectionError" in repr(err.args[0] if err.args else err)
    )
    kind = "read timeout" if isinstance(err, requests.exceptions.ReadTimeout) else type(err).__name__
    return _RetryableConnectionError(
        f"Cometly {where}: {kind} talking to the API", maybe_processed=not never_sent
    )


def _masked(export: dict[str, Any]) -> dict[str, Any]:
    """An export status with its presigned URL registered with the secret masker."""
    if isinstance(export.get("download_url"), str):
        mask_presigned_url(export["download_url"])
    return export


def _normalize_host(host: str | None, port: int | None = None) -> str:
    """``scheme://host[:port]`` from the connection's host and port fields.

    A host without a scheme gets https://. The port field (or a URI-form connection's port) is kept
    unless the host already names one; 0 is what the form sends for "no port".
    """
    if not host:
        return DEFAULT_HOST
    host = host.strip().rstrip("/")
    if host.endswith(API_PREFIX):
        host = host[: -len(API_PREFIX)]
    if "://" not in host:
        host = "https://" + host
    if port:
        parts = urlsplit(host)
        if parts.port is None:
            host = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{int(port)}"))
    return host


def _first(*values: Any, cast: Callable[[Any], Any]) -> Any:
    for value in values:
        if value is not None:
            if cast is bool and isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return cast(value)
    raise AssertionError("a default must be given")  # pragma: no cover
