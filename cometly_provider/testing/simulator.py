"""A local, faithful Cometly API for tests, benchmarks and demos (what moto is for AWS).

Run it in a thread (:func:`run_simulator`, the ``cometly_simulator`` pytest fixture), in a
subprocess (:func:`~cometly_provider.testing.spawn_simulator`), or from the shell::

    python -m cometly_provider.testing.simulator --port 8099 --api-key KEY

It serves, under ``/public-api/v1``, ``POST /events/track``, ``POST /events/exports``,
``GET /events/exports/{id}``, ``POST /contacts/exports`` and ``GET /contacts/exports/{id}``, plus
presigned "S3" downloads under ``/_s3/exports/``. Rules follow
``shared/cometly-api`` (README.md, create-event.md, create-event-export.md). Standard library only.

Choices where the reference is silent (the real service is a Laravel app behind S3):

* Order of checks for API requests: injected fault -> rate limit -> auth (401 / 403) -> JSON body
  -> validation (422) -> lookup (404) -> action. Rate limits are keyed by API key when the key is
  known (active or inactive), else by client IP, so 401s carry rate-limit headers too. Requests that
  end in 401 / 422 / 404 count against the limit (Laravel's throttle runs before the controller);
  429s do not. The window is Laravel's fixed window starting at the first hit;
  ``Retry-After`` is the whole seconds left (at least 1), plus ``X-RateLimit-Reset`` on 429.
* Unknown routes answer 404 ``{"message": "The route ... could not be found."}`` and wrong methods
  405, before auth (Laravel routing runs first). ``GET /events`` (list) is not implemented.
  A non-integer export id is a 404 "Export not found." after auth.
* Bodies must be JSON objects sent with ``Content-Type: application/json``; anything else is a 422
  with a ``message``. ``Accept`` is not enforced (requests may still be inspected for it).
* Track: ``null`` means absent; blank strings do not identify anyone; string fields must be
  strings; ``amount`` must be a JSON number (numeric strings are rejected); ``is_upsell`` /
  ``do_not_capi`` must be JSON booleans; ``event_time`` may be ISO 8601 or Unix seconds
  (number or digit string, below 1e11, i.e. not milliseconds); profile fields 16..25 accept numbers
  and numeric strings, 26..30 ISO 8601 dates. Unknown keys are accepted and stored (Laravel ignores
  them). Validation runs before de-duplication.
* De-duplication: an event whose ``idempotency_key`` or ``order_id`` was already stored is answered
  202 ``{"status": 202, "message": "Duplicate event ignored.", "duplicate": true}`` (the
  ``duplicate`` flag is a simulator extension) and is not stored again.
* Exports: unknown body keys are rejected as ``prohibited`` (a stray ``end_date`` must not silently
  widen or narrow the day); ``id`` / ``event_time_utc`` are accepted in ``fields`` (the reference's
  example requests them), ``touchpoint_id`` / ``source`` are not (not user-requestable);
  ``attribution_window`` must be a JSON integer; ``attribution_model`` / ``attribution_window`` sent
  without ``sources`` are checked but otherwise ignored. Content rules are in ``_exports``.
* Contacts exports share the event exports' life cycle, ids, outcomes (``next_exports_outcome``),
  timings, presigned downloads and download faults; their endpoints are ``contacts_export_create``
  / ``contacts_export_status`` for rate limits and fault injection. An id of the other kind is a
  404. Rows (``contact_export_rows`` per export) are in ``_contacts``.
* An export completes only when its file is fully written *and* ``queued_seconds +
  processing_seconds`` have elapsed; ``completed_at`` is the later of the two. Timings, row count
  and outcome are fixed when the export is created. Identical exports share one cached file.
* Presigned URLs: ``X-Amz-Date`` (whole seconds) + ``X-Amz-Expires`` (whole seconds, rounded up so
  the URL lives at least ``url_ttl_seconds``); ``expires_at`` is exactly when the URL stops
  working. The signature is an HMAC over method, path, date, expiry and token with a
  per-simulator secret. Each URL carries a random ``X-Amz-Security-Token`` (signed), so every
  poll's URL is distinct.
  A bad or missing signature is 403 ``SignatureDoesNotMatch`` / ``AccessDenied``, an expired URL 403
  ``AccessDenied`` "Request has expired", an unknown object 404 ``NoSuchKey`` (S3 XML bodies).
  The object is served as ``Content-Type: application/gzip`` with no ``Content-Encoding`` (so HTTP
  clients do not decompress it), with ``ETag`` = quoted MD5 of the bytes, ``Accept-Ranges``, and one
  ``Range`` honoured (206 / 416); multi-range requests get the whole object, like S3.
* Timestamps are ISO 8601 UTC with whole seconds and ``Z`` ("2024-01-15T10:30:00Z").
* Secrets: the API key is never logged; the access log (off by default) shows method, path without
  query string, and status only. ``sim.requests`` keeps request headers, Authorization included,
  because tests assert on them.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import dataclasses
import email.utils
import hashlib
import hmac
import http
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from cometly_provider.testing._contacts import ContactsSpec
from cometly_provider.testing._exports import ExportCancelled, ExportFile, ExportSpec, write_export
from cometly_provider.testing._models import (
    API_PREFIX,
    DEFAULT_RATE_LIMITS,
    DOWNLOAD_ONLY_FAULTS,
    ENDPOINTS,
    EXPORT_OUTCOMES,
    FAULT_KINDS,
    ExportRecord,
    FaultRule,
    RequestRecord,
    SimulatorConfig,
    check_fault,
)
from cometly_provider.testing._rules import (
    ALWAYS_INCLUDED_FIELDS,
    validate_contact_export,
    validate_export,
    validate_track,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "ENDPOINTS",
    "EXPORT_OUTCOMES",
    "FAULT_KINDS",
    "CometlySimulator",
    "ExportRecord",
    "FaultRule",
    "RequestRecord",
    "SimulatorConfig",
    "main",
    "run_simulator",
]

_MAX_BODY = 16 * 1024 * 1024
_EXPORT_STATUS_RE = re.compile(r"/(events|contacts)/exports/([^/]+)")
#: Export kind -> (create endpoint, status endpoint): the names used by rate limits and faults.
_EXPORT_ENDPOINTS: dict[str, tuple[str, str]] = {
    "events": ("export_create", "export_status"),
    "contacts": ("contacts_export_create", "contacts_export_status"),
}
_DOWNLOAD_RE = re.compile(r"/_s3/exports/([0-9a-f-]{36})\.ndjson\.gz")
_QUEUED_MESSAGE = "Export is queued for processing."
_PROCESSING_MESSAGE = "Export is being processed. Please check back in a few minutes."
_STATUS_MESSAGES = {
    429: "Too Many Attempts.",
    500: "Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _s3_error(code: str, message: str) -> bytes:
    request_id = secrets.token_hex(8).upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
    ).encode()


# --- State ------------------------------------------------------------------------------------


@dataclass
class _Job:
    """Generation of one export file, shared by every export with the same spec."""

    spec: ExportSpec | ContactsSpec
    path: str
    done: threading.Event = field(default_factory=threading.Event)
    file: ExportFile | None = None
    error: str | None = None
    finished_at: float = 0.0  # wall clock


@dataclass
class _Export:
    export_id: int
    params: dict[str, Any]
    spec: ExportSpec | ContactsSpec
    created_wall: float
    created_mono: float
    queued_seconds: float
    processing_seconds: float
    outcome: str
    failure_message: str
    object_key: str
    job: _Job | None = None
    kind: str = "events"


@dataclass
class _Window:
    start: float
    count: int = 0


@dataclass(frozen=True)
class _RateInfo:
    limit: int
    remaining: int
    retry_after: int | None = None  # set when the request is refused


class CometlySimulator:
    """A running (or startable) simulator and its control / inspection handle.

    ``CometlySimulator(config).start()`` serves on ``config.host:config.port`` in a daemon thread;
    ``stop()`` closes the listening socket and open connections and removes generated files. Usable
    as a context manager.
    """

    def __init__(self, config: SimulatorConfig | None = None, **options: Any) -> None:
        self.config = config if config is not None else SimulatorConfig()
        if options:
            self.config.update(**options)
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(32)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._workdir: str | None = None
        self._cancel = threading.Event()
        self._jobs: dict[str, _Job] = {}
        self._job_threads: list[threading.Thread] = []
        self._clear_state()

    def _clear_state(self) -> None:
        with self._lock:
            self._events: list[dict[str, Any]] = []
            self._duplicates = 0
            self._idempotency_keys: set[str] = set()
            self._order_ids: set[str] = set()
            self._requests: list[RequestRecord] = []
            self._faults: list[FaultRule] = []
            self._fault_seq = 0
            self._windows: dict[tuple[str, str], _Window] = {}
            self._exports: dict[int, _Export] = {}
            self._objects: dict[str, _Export] = {}
            self._next_export_id = self.config.export_id_start
            self._outcomes: deque[tuple[str, str | None]] = deque()
            self._issued_signatures: list[str] = []

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> CometlySimulator:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._cancel.clear()
        self._workdir = tempfile.mkdtemp(prefix="cometly-sim-", dir=self.config.work_dir)
        self._server = _Server((self.config.host, self.config.port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="cometly-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        stopper = threading.Thread(target=server.shutdown, name="cometly-simulator-stop", daemon=True)
        stopper.start()
        # Wake the accept loop now instead of at its next poll: makes stop() (each test's teardown) fast.
        with contextlib.suppress(OSError), socket.create_connection(self._connect_address(server), timeout=1):
            pass
        stopper.join()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._cancel.set()
        for thread in self._job_threads:
            thread.join(timeout=10)
        self._job_threads.clear()
        with self._lock:
            self._jobs.clear()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @staticmethod
    def _connect_address(server: _Server) -> tuple[str, int]:
        host, port = server.server_address[:2]
        if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached through loopback
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
        return str(host), int(port)

    def __enter__(self) -> CometlySimulator:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the bound host; loopback for a wildcard bind)."""
        if self._server is None:
            raise RuntimeError("simulator is not running")
        host, port = self._connect_address(self._server)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def api_base(self) -> str:
        """``base_url + "/public-api/v1"``: what the provider's connection ``host`` should point at."""
        return self.base_url + API_PREFIX

    @property
    def api_key(self) -> str:
        return self.config.api_key

    # --- inspection -----------------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """Stored /events/track payloads in arrival order (duplicates excluded)."""
        with self._lock:
            return [dict(e) for e in self._events]

    @property
    def duplicates(self) -> int:
        """Track requests answered "Duplicate event ignored." (not stored)."""
        with self._lock:
            return self._duplicates

    @property
    def requests(self) -> list[RequestRecord]:
        """API and download requests in arrival order (admin requests are not recorded)."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, endpoint: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._requests if r.endpoint == endpoint]

    def status_counts(self, endpoint: str | None = None) -> dict[int | None, int]:
        """Response status -> count, for one endpoint or all (None = connection reset)."""
        with self._lock:
            return dict(Counter(r.status for r in self._requests if endpoint in (None, r.endpoint)))

    @property
    def exports(self) -> dict[int, ExportRecord]:
        now_mono, now_wall = time.monotonic(), time.time()
        with self._lock:
            return {i: self._export_record(e, now_mono, now_wall) for i, e in self._exports.items()}

    @property
    def faults(self) -> list[FaultRule]:
        with self._lock:
            return [FaultRule.from_dict(f.to_dict()) for f in self._faults]

    @property
    def issued_signatures(self) -> list[str]:
        """Every presigned-URL signature handed out so far, for "never leaked" assertions."""
        with self._lock:
            return list(self._issued_signatures)

    # --- control --------------------------------------------------------------------------------

    def update_config(self, **changes: Any) -> None:
        """Validated config change (``sim.config.x = y`` works too, unchecked)."""
        with self._lock:
            self.config.update(**changes)

    def reset(self) -> None:
        """Forget events, duplicates, requests, faults, rate-limit windows, exports and queued outcomes.

        Export ids restart at ``export_id_start``; generated files stay cached until ``stop()``.
        """
        self._clear_state()

    def inject(
        self,
        endpoint: str,
        kind: str,
        *,
        times: int | None = 1,
        after: int = 0,
        every: int = 1,
        **params: Any,
    ) -> FaultRule:
        """Make matching requests misbehave.

        ``endpoint``: one of ``ENDPOINTS`` or ``"*"``. ``kind``:

        * ``"status"`` - answer ``code`` (default 500) with ``{"message": message}`` (or a raw
          ``body`` with ``content_type``, e.g. an HTML 502 page) and ``Retry-After: retry_after`` if
          given; the request is not processed and not rate-counted;
        * ``"reset"`` - read the request, then close the connection with a TCP RST, no response;
        * ``"delay"`` - sleep ``seconds``, then handle the request normally (other faults still apply);
        * ``"cut"`` (download) - send headers with the full Content-Length, then only ``at_byte``
          bytes of the body (counted from the start of the requested range), then close;
        * ``"expire"`` (download) - 403 "Request has expired" whatever the URL says.

        Of the matching requests, the first ``after`` are left alone; after that the fault fires on
        every ``every``-th one (``every=2``: 2nd, 4th, ...), ``times`` times in all (None: until
        cleared). Rules are tried in order; the first firing non-delay rule decides the response.
        """
        check_fault(endpoint, kind, times, after, every, params)
        with self._lock:
            self._fault_seq += 1
            rule = FaultRule(self._fault_seq, endpoint, kind, times, after, every, dict(params))
            self._faults.append(rule)
            return FaultRule.from_dict(rule.to_dict())

    def clear_faults(self, endpoint: str | None = None) -> None:
        """Remove all faults, or those registered for one endpoint name."""
        with self._lock:
            self._faults = [f for f in self._faults if endpoint is not None and f.endpoint != endpoint]

    def next_exports_outcome(self, outcome: str, count: int = 1, message: str | None = None) -> None:
        """Force the outcome of the next ``count`` created exports (then ``config.export_outcome``)."""
        if outcome not in EXPORT_OUTCOMES:
            raise ValueError(f"outcome must be one of {EXPORT_OUTCOMES}, got {outcome!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        with self._lock:
            self._outcomes.extend([(outcome, message)] * count)

    def presign(self, export_id: int) -> tuple[str, float]:
        """A fresh presigned URL (and its expiry, epoch seconds) for a completed export."""
        with self._lock:
            export = self._exports[export_id]
        return self._presign(export)

    # --- internals: faults, rate limits ----------------------------------------------------------

    def _match_fault(self, endpoint: str) -> tuple[float, FaultRule | None]:
        """Delay to apply and the fault that decides the response (counting every matching rule)."""
        delay = 0.0
        chosen: FaultRule | None = None
        with self._lock:
            for rule in self._faults:
                if rule.exhausted or rule.endpoint not in ("*", endpoint):
                    continue
                if rule.kind in DOWNLOAD_ONLY_FAULTS and endpoint != "download":
                    continue
                rule.matched += 1
                position = rule.matched - rule.after
                if position <= 0 or position % rule.every:
                    continue
                if rule.kind == "delay":
                    rule.applied += 1
                    delay += float(rule.params.get("seconds", 0))
                elif chosen is None:
                    rule.applied += 1
                    chosen = FaultRule.from_dict(rule.to_dict())
        return delay, chosen

    def _limit(self, endpoint: str) -> int:
        limits = self.config.rate_limits
        return int(limits.get(endpoint, DEFAULT_RATE_LIMITS.get(endpoint, 60)))

    def _hit(self, bucket: str, endpoint: str, consume: bool = True) -> _RateInfo:
        limit = self._limit(endpoint)
        if not self.config.rate_limiting_enabled:
            return _RateInfo(limit, limit)
        now = time.monotonic()
        window_length = self.config.window_seconds
        with self._lock:
            window = self._windows.get((bucket, endpoint))
            if window is None or now - window.start >= window_length:
                window = _Window(now)
                if consume:
                    self._windows[(bucket, endpoint)] = window
            if window.count >= limit:
                retry = max(1, math.ceil(window.start + window_length - now))
                return _RateInfo(limit, 0, retry)
            if consume:
                window.count += 1
            return _RateInfo(limit, limit - window.count)

    # --- internals: track -------------------------------------------------------------------------

    def _store_event(self, payload: dict[str, Any]) -> bool:
        """Store unless it duplicates a stored idempotency_key / order_id; True if stored."""
        key = payload.get("idempotency_key")
        order = payload.get("order_id")
        key = key if isinstance(key, str) and key.strip() else None
        order = order if isinstance(order, str) and order.strip() else None
        with self._lock:
            if (key is not None and key in self._idempotency_keys) or (
                order is not None and order in self._order_ids
            ):
                self._duplicates += 1
                return False
            self._events.append(payload)
            if key is not None:
                self._idempotency_keys.add(key)
            if order is not None:
                self._order_ids.add(order)
            return True

    # --- internals: exports -----------------------------------------------------------------------

    def _create_export(self, payload: dict[str, Any]) -> int:
        config = self.config
        fields = tuple(f for f in payload.get("fields") or () if f not in ALWAYS_INCLUDED_FIELDS)
        date = payload["date"]
        sources = payload.get("sources")
        rows = int(config.export_rows_by_date.get(date, config.export_rows))
        spec = ExportSpec(
            date=date,
            query_mode=payload.get("query_mode") or "profile",
            event_names=tuple(payload["event_names"]) if payload.get("event_names") else None,
            sources=tuple(sources) if sources else None,
            attribution_model=payload.get("attribution_model") if sources else None,
            attribution_window=payload.get("attribution_window") if sources else None,
            fields=fields,
            rows=rows,
            seed=config.seed,
            padding=config.row_padding_bytes,
            gzip_level=config.gzip_level,
        )
        return self._new_export({"query_mode": "profile", **payload}, spec, "events")

    def _create_contacts_export(self, payload: dict[str, Any]) -> int:
        spec = ContactsSpec(
            start=payload["start_date"],
            end=payload["end_date"],
            include_comet_tokens=bool(payload.get("include_comet_tokens")),
            include_all_emails=bool(payload.get("include_all_emails")),
            rows=self.config.contact_export_rows,
            seed=self.config.seed,
            gzip_level=self.config.gzip_level,
        )
        return self._new_export(dict(payload), spec, "contacts")

    def _new_export(self, params: dict[str, Any], spec: ExportSpec | ContactsSpec, kind: str) -> int:
        """One export of either kind: same ids, outcomes, timing, faults and presigned downloads."""
        config = self.config
        with self._lock:
            outcome, message = self._outcomes.popleft() if self._outcomes else (config.export_outcome, None)
            export_id = self._next_export_id
            self._next_export_id += 1
            export = _Export(
                export_id=export_id,
                params=params,
                spec=spec,
                created_wall=time.time(),
                created_mono=time.monotonic(),
                queued_seconds=config.queued_seconds,
                processing_seconds=config.processing_seconds,
                outcome=outcome,
                failure_message=message or config.export_failure_message,
                object_key=str(uuid.uuid4()),
                kind=kind,
            )
            if outcome == "completed":
                export.job = self._job_for(spec)
            self._exports[export_id] = export
            self._objects[export.object_key] = export
        return export_id

    def _job_for(self, spec: ExportSpec | ContactsSpec) -> _Job:
        key = spec.cache_key()
        job = self._jobs.get(key)
        if job is not None and job.error is None:
            return job
        assert self._workdir is not None
        job = _Job(spec, os.path.join(self._workdir, f"{key}.ndjson.gz"))
        self._jobs[key] = job
        thread = threading.Thread(target=self._generate, args=(job,), name="cometly-sim-export", daemon=True)
        self._job_threads = [t for t in self._job_threads if t.is_alive()]
        self._job_threads.append(thread)
        thread.start()
        return job

    def _generate(self, job: _Job) -> None:
        try:
            job.file = write_export(job.spec, job.path, self._cancel, self.config.gzip_workers or None)
        except ExportCancelled:
            job.error = "cancelled"
        except Exception as exc:  # reported through the export's status
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()
            job.done.set()

    def _export_state(self, export: _Export, now_mono: float) -> tuple[str, str | None, float | None]:
        """(status, message, completed_at epoch) of an export at ``now_mono``."""
        elapsed = now_mono - export.created_mono
        if elapsed < export.queued_seconds:
            return "queued", _QUEUED_MESSAGE, None
        if export.outcome == "stuck" or elapsed < export.queued_seconds + export.processing_seconds:
            return "processing", _PROCESSING_MESSAGE, None
        if export.outcome == "failed":
            return "failed", export.failure_message, None
        job = export.job
        assert job is not None
        if not job.done.is_set():
            return "processing", _PROCESSING_MESSAGE, None
        if job.error is not None:
            return "failed", export.failure_message, None
        due = export.created_wall + export.queued_seconds + export.processing_seconds
        return "completed", None, max(due, job.finished_at)

    def _export_record(self, export: _Export, now_mono: float, now_wall: float) -> ExportRecord:
        status, message, completed = self._export_state(export, now_mono)
        file = export.job.file if export.job is not None and status == "completed" else None
        return ExportRecord(
            export_id=export.export_id,
            status=status,
            params=dict(export.params),
            created_at=_iso(export.created_wall),
            outcome=export.outcome,
            message=message,
            completed_at=_iso(completed) if completed is not None else None,
            object_key=export.object_key,
            rows=export.spec.rows,
            lines=file.lines if file else None,
            size=file.size if file else None,
            etag=file.etag if file else None,
            kind=export.kind,
        )

    def _status_body(self, export: _Export) -> dict[str, Any]:
        status, message, completed = self._export_state(export, time.monotonic())
        body: dict[str, Any] = {
            "export_id": export.export_id,
            "status": status,
            "created_at": _iso(export.created_wall),
        }
        if message is not None:
            body["message"] = message
        if status == "completed":
            assert completed is not None
            url, expires = self._presign(export)
            body.update(completed_at=_iso(completed), download_url=url, expires_at=_iso(expires))
        return body

    # --- internals: presigned URLs ------------------------------------------------------------------

    def _signature(self, path: str, amz_date: str, expires: str, token: str) -> str:
        message = f"GET\n{path}\n{amz_date}\n{expires}\n{token}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _presign(self, export: _Export) -> tuple[str, float]:
        now = time.time()
        signed_at = int(now)
        # Whole seconds, rounded up: the URL lives at least url_ttl_seconds from this request.
        expires = max(1, math.ceil(self.config.url_ttl_seconds + (now - signed_at)))
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
        path = f"/_s3/exports/{export.object_key}.ndjson.gz"
        # A per-URL session token (as with role credentials) makes every poll's URL distinct.
        token = secrets.token_urlsafe(24)
        signature = self._signature(path, amz_date, str(expires), token)
        with self._lock:
            self._issued_signatures.append(signature)
        credential = f"ASIASIMULATOR%2F{amz_date[:8]}%2Fus-east-1%2Fs3%2Faws4_request"
        query = (
            f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={credential}&X-Amz-Date={amz_date}"
            f"&X-Amz-Expires={expires}&X-Amz-Security-Token={token}&X-Amz-SignedHeaders=host"
            f"&X-Amz-Signature={signature}"
        )
        return f"{self.base_url}{path}?{query}", float(signed_at + expires)

    def _verify(self, path: str, query: str) -> tuple[int, bytes] | None:
        """None if the presigned query is valid now, else the S3 error response."""
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        needed = ("X-Amz-Algorithm", "X-Amz-Date", "X-Amz-Expires", "X-Amz-Signature")
        if any(k not in params for k in needed):
            return 403, _s3_error(
                "AccessDenied",
                "Query-string authentication requires the X-Amz-Algorithm, X-Amz-Credential, "
                "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.",
            )
        token = params.get("X-Amz-Security-Token", "")
        expected = self._signature(path, params["X-Amz-Date"], params["X-Amz-Expires"], token)
        if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
            return 403, _s3_error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
            )
        try:
            signed_at = calendar.timegm(time.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
            expires = int(params["X-Amz-Expires"])
        except ValueError:
            return 403, _s3_error("AccessDenied", "X-Amz-Date or X-Amz-Expires is malformed.")
        if time.time() >= signed_at + expires:
            return 403, _s3_error("AccessDenied", "Request has expired")
        return None

    # --- internals: request log -------------------------------------------------------------------

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    # --- admin API (also used by SimulatorClient) ----------------------------------------------------

    def _admin(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any]:
        """Handle /_simulator/...; returns (status, JSON body)."""
        args = {k: v[0] for k, v in parse_qs(query).items()}
        route = path.removeprefix("/_simulator").strip("/")
        try:
            if route == "health" and method == "GET":
                return 200, {"status": "ok", "base_url": self.base_url}
            if route == "config" and method == "GET":
                return 200, self.config.to_dict()
            if route == "config" and method == "PATCH":
                self.update_config(**_object(body))
                return 200, self.config.to_dict()
            if route == "events" and method == "GET":
                return 200, {"events": self.events, "duplicates": self.duplicates}
            if route == "requests" and method == "GET":
                endpoint = args.get("endpoint")
                records = self.requests_for(endpoint) if endpoint else self.requests
                return 200, {"requests": [r.to_dict() for r in records]}
            if route == "status-counts" and method == "GET":
                counts = self.status_counts(args.get("endpoint"))
                return 200, {"counts": [[status, n] for status, n in counts.items()]}
            if route == "exports" and method == "GET":
                return 200, {"exports": [e.to_dict() for e in self.exports.values()]}
            if route == "faults" and method == "GET":
                return 200, {"faults": [f.to_dict() for f in self.faults]}
            if route == "signatures" and method == "GET":
                return 200, {"signatures": self.issued_signatures}
            if route == "faults" and method == "POST":
                data = dict(_object(body))
                endpoint_name = data.pop("endpoint", None)
                kind = data.pop("kind", None)
                if not isinstance(endpoint_name, str) or not isinstance(kind, str):
                    raise ValueError("a fault needs 'endpoint' and 'kind'")
                extra = data.pop("params", {})
                rule = self.inject(endpoint_name, kind, **data, **_object(extra))
                return 201, {"fault": rule.to_dict()}
            if route == "faults" and method == "DELETE":
                self.clear_faults(args.get("endpoint"))
                return 200, {"faults": []}
            if route == "reset" and method == "POST":
                self.reset()
                return 200, {"status": "reset"}
            if route == "export-outcomes" and method == "POST":
                data = _object(body)
                self.next_exports_outcome(
                    data.get("outcome", ""), count=data.get("count", 1), message=data.get("message")
                )
                return 200, {"status": "ok"}
        except (TypeError, ValueError) as exc:
            return 400, {"message": str(exc)}
        return 404, {"message": f"Unknown simulator admin route {method} {path}."}


def _object(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise TypeError("expected a JSON object")
    return body


# --- HTTP server ----------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: CometlySimulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections so they exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response are normal in fault tests; anything else is a bug to show.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CometlySimulator/1.0"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    _pending: RequestRecord | None = None
    _fault_kind: str | None = None
    timeout = 300  # idle keep-alive connections are dropped after this
    server: _Server

    # --- plumbing ---------------------------------------------------------------------------------

    @property
    def sim(self) -> CometlySimulator:
        return self.server.sim

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        # Only our own redacted line (see log_request); never the default one with the raw path.
        return

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.sim.config.access_log:
            path = urlsplit(self.path).path
            sys.stderr.write(f"{self.address_string()} {self.command} {path} {code}\n")

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes | None:
        """The request body (b"" if none); None if it could not be read (response already sent)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    self._send_plain(400, b"Bad chunked encoding", close=True)
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > _MAX_BODY:
                    self._send_plain(413, b"Request body too large", close=True)
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            self._send_plain(400, b"Bad Content-Length", close=True)
            return None
        if length > _MAX_BODY or length < 0:
            self._send_plain(413, b"Request body too large", close=True)
            return None
        return self.rfile.read(length)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_plain(self, status: int, body: bytes, close: bool = False) -> None:
        self._send(status, body, "text/plain; charset=utf-8", close=close)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        all_headers = {"Cache-Control": "no-cache, private", **(headers or {})}
        self._send(status, body, "application/json", all_headers)

    def _reset_connection(self) -> None:
        """Abort with a TCP RST: SO_LINGER 0, then close the only references to the socket."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.rfile.close()
            self.connection.close()
        self.close_connection = True

    def _expect_record(self, endpoint: str, path: str, query: str, json_body: Any, started: float) -> None:
        """Record this request (with its status) when the response starts, see ``send_response``."""
        self._pending = RequestRecord(
            timestamp=started,
            method=self.command,
            path=path,
            endpoint=endpoint,
            status=None,
            headers=dict(self.headers.items()),
            json=None if json_body is _INVALID else json_body,
            query=query,
        )

    def _flush_record(self, status: int | None, fault: str | None = None) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            fault = fault or self._fault_kind
            self.sim._record(dataclasses.replace(pending, status=status, fault=fault))

    def send_response(self, code: int, message: str | None = None) -> None:
        # Recorded before the first byte goes out, so a client that got a response always finds
        # its request in ``sim.requests``.
        self._flush_record(code)
        super().send_response(code, message)

    # --- routing ----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        started = time.time()
        self._pending = None
        self._fault_kind = None
        split = urlsplit(self.path)
        path, query = split.path, split.query
        body = self._read_body()
        if body is None:
            return
        if path == "/_simulator" or path.startswith("/_simulator/"):
            self._handle_admin(path, query, body)
        elif path.startswith("/_s3/"):
            self._handle_download(path, query, started)
        elif path.startswith(API_PREFIX + "/"):
            self._handle_api(path, query, body, started)
        else:
            self._send_json(404, {"message": f"The route {path.lstrip('/')} could not be found."})

    def _handle_admin(self, path: str, query: str, body: bytes) -> None:
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError as exc:
            self._send_json(400, {"message": f"Malformed JSON body: {exc}"})
            return
        status, payload = self.sim._admin(self.command, path, query, parsed)
        self._send_json(status, payload)

    def _route(self, route: str) -> tuple[str | None, set[str]]:
        """(endpoint name, allowed methods) for an API route; name None if method not allowed."""
        if route == "/events/track":
            return ("track" if self.command == "POST" else None), {"POST"}
        for kind, (create, _status) in _EXPORT_ENDPOINTS.items():
            if route == f"/{kind}/exports":
                return (create if self.command == "POST" else None), {"POST"}
        match = _EXPORT_STATUS_RE.fullmatch(route)
        if match:
            status = _EXPORT_ENDPOINTS[match.group(1)][1]
            return (status if self.command in ("GET", "HEAD") else None), {"GET", "HEAD"}
        return None, set()

    def _handle_api(self, path: str, query: str, body: bytes, started: float) -> None:
        sim = self.sim
        payload: dict[str, Any]
        route = path[len(API_PREFIX) :]
        endpoint, allowed = self._route(route)
        if endpoint is None:
            if allowed:
                status = 405
                message = (
                    f"The {self.command} method is not supported for route {path.lstrip('/')}. "
                    f"Supported methods: {', '.join(sorted(allowed))}."
                )
            else:
                status, message = 404, f"The route {path.lstrip('/')} could not be found."
            self._expect_record("unknown", path, query, _try_json(body), started)
            self._send_json(status, {"message": message})
            return

        json_body = _try_json(body)
        self._expect_record(endpoint, path, query, json_body, started)
        delay, fault = sim._match_fault(endpoint)
        if delay:
            self._fault_kind = "delay"
            time.sleep(delay)

        token = _bearer(self.headers.get("Authorization"))
        known = token is not None and (token == sim.config.api_key or token in sim.config.inactive_api_keys)
        # Laravel throttles a known key's Space, and anonymous callers by IP.
        if known and token is not None:
            bucket = "key:" + hashlib.sha256(token.encode()).hexdigest()
        else:
            bucket = f"ip:{self.client_address[0]}"

        if fault is not None:
            self._apply_api_fault(fault, endpoint, bucket)
            return

        rate = sim._hit(bucket, endpoint)
        headers = {"X-RateLimit-Limit": str(rate.limit), "X-RateLimit-Remaining": str(rate.remaining)}
        if rate.retry_after is not None:
            headers["Retry-After"] = str(rate.retry_after)
            headers["X-RateLimit-Reset"] = str(math.ceil(time.time()) + rate.retry_after)
            self._finish(429, {"message": "Too Many Attempts."}, headers)
            return

        if not known:
            self._finish(401, {"message": "Unauthenticated."}, headers)
            return
        if token != sim.config.api_key:
            message = "This action is unauthorized: the subscription for this API key is inactive."
            self._finish(403, {"message": message}, headers)
            return

        if endpoint in ("export_status", "contacts_export_status"):
            match = _EXPORT_STATUS_RE.fullmatch(route)
            assert match is not None
            kind, raw_id = match.group(1), match.group(2)
            with sim._lock:
                export = sim._exports.get(int(raw_id)) if raw_id.isascii() and raw_id.isdigit() else None
            if export is None or export.kind != kind:
                status, payload = 404, {"message": "Export not found."}
            else:
                status, payload = 200, sim._status_body(export)
            self._finish(status, payload, headers)
            return

        # POST endpoints: a JSON object body is required.
        content_type = self.headers.get("Content-Type", "")
        if body.strip() and "json" not in content_type.lower():
            payload = {
                "message": "The request body must be JSON sent with Content-Type: application/json.",
                "errors": {
                    "body": ["The request body must be JSON sent with Content-Type: application/json."]
                },
            }
            self._finish(422, payload, headers)
            return
        if json_body is _INVALID:
            payload = {
                "message": "The request body is not valid JSON.",
                "errors": {"body": ["The request body is not valid JSON."]},
            }
            self._finish(422, payload, headers)
            return
        data = {} if json_body is None else json_body
        if not isinstance(data, dict):
            payload = {
                "message": "The request body must be a JSON object.",
                "errors": {"body": ["The request body must be a JSON object."]},
            }
            self._finish(422, payload, headers)
            return

        if endpoint == "track":
            errors = validate_track(data)
            if errors:
                self._finish(422, errors.body(), headers)
            elif sim._store_event(dict(data)):
                payload = {"status": 202, "message": "Event queued for processing."}
                self._finish(202, payload, headers)
            else:
                payload = {"status": 202, "message": "Duplicate event ignored.", "duplicate": True}
                self._finish(202, payload, headers)
            return

        contacts = endpoint == "contacts_export_create"
        errors = validate_contact_export(data) if contacts else validate_export(data)
        if errors:
            self._finish(422, errors.body(), headers)
            return
        export_id = sim._create_contacts_export(data) if contacts else sim._create_export(data)
        self._finish(202, {"export_id": export_id, "status": "queued"}, headers)

    def _finish(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        self._send_json(status, payload, headers)

    def _apply_api_fault(self, fault: FaultRule, endpoint: str, bucket: str) -> None:
        self._fault_kind = fault.kind
        if fault.kind == "reset":
            self._flush_record(None)
            self._reset_connection()
            return
        # "status": answer without processing or counting the request.
        params = fault.params
        code = int(params.get("code", 500))
        rate = self.sim._hit(bucket, endpoint, consume=False)
        headers = {
            "X-RateLimit-Limit": str(rate.limit),
            "X-RateLimit-Remaining": "0" if code == 429 else str(rate.remaining),
        }
        if params.get("retry_after") is not None:
            headers["Retry-After"] = str(params["retry_after"])
        if params.get("body") is not None:
            raw = str(params["body"]).encode()
            self._send(code, raw, str(params.get("content_type") or "text/html; charset=utf-8"), headers)
        else:
            message = params.get("message") or _STATUS_MESSAGES.get(code) or _phrase(code)
            self._send_json(code, {"message": message}, headers)

    # --- presigned downloads ------------------------------------------------------------------------

    def _handle_download(self, path: str, query: str, started: float) -> None:
        sim = self.sim
        self._expect_record("download", path, query, None, started)
        if self.command not in ("GET", "HEAD"):
            self._send(
                405, _s3_error("MethodNotAllowed", "The specified method is not allowed."), "application/xml"
            )
            return
        delay, fault = sim._match_fault("download")
        if delay:
            self._fault_kind = "delay"
            time.sleep(delay)
        kind = fault.kind if fault is not None else None
        self._fault_kind = kind or self._fault_kind

        if kind == "reset":
            self._flush_record(None)
            self._reset_connection()
            return
        if fault is not None and kind == "status":
            code = int(fault.params.get("code", 500))
            headers = {}
            if fault.params.get("retry_after") is not None:
                headers["Retry-After"] = str(fault.params["retry_after"])
            message = str(fault.params.get("message") or _phrase(code))
            error_code = {500: "InternalError", 503: "SlowDown"}.get(code, "ServiceUnavailable")
            self._send(code, _s3_error(error_code, message), "application/xml", headers)
            return
        if kind == "expire":
            self._send(403, _s3_error("AccessDenied", "Request has expired"), "application/xml")
            return

        refused = sim._verify(path, query)
        if refused is not None:
            self._send(refused[0], refused[1], "application/xml")
            return
        match = _DOWNLOAD_RE.fullmatch(path)
        with sim._lock:
            export = sim._objects.get(match.group(1)) if match else None
        job = export.job if export is not None else None
        file = job.file if job is not None and job.done.is_set() else None
        if file is None:
            self._send(404, _s3_error("NoSuchKey", "The specified key does not exist."), "application/xml")
            return
        cut = int(fault.params.get("at_byte", 0)) if fault is not None and kind == "cut" else None
        self._serve_file(file, cut)

    def _serve_file(self, file: ExportFile, cut: int | None) -> int:
        size = file.size
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                self._send(
                    416,
                    _s3_error("InvalidRange", "The requested range is not satisfiable"),
                    "application/xml",
                    {"Content-Range": f"bytes */{size}"},
                )
                return 416
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
        length = end - start + 1
        try:
            handle = open(file.path, "rb")  # noqa: SIM115 - closed below, after sendfile
        except OSError:
            self._send(404, _s3_error("NoSuchKey", "The specified key does not exist."), "application/xml")
            return 404
        with handle:
            self.send_response(status)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", file.etag)
            self.send_header(
                "Last-Modified", email.utils.formatdate(os.fstat(handle.fileno()).st_mtime, usegmt=True)
            )
            self.send_header("x-amz-request-id", secrets.token_hex(8).upper())
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            if cut is not None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return status
            count = length if cut is None else min(cut, length)
            if count > 0:
                # Zero-copy from the page cache: the export never passes through Python memory.
                self.connection.sendfile(handle, start, count)
        return status


_INVALID = object()


def _try_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        return _INVALID


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) for one satisfiable byte range, "unsatisfiable", or None to ignore the header."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None:
        return None  # malformed or multi-range: S3 serves the whole object
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    if end < start:
        return None
    return start, min(end, size - 1)


# --- start helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def run_simulator(config: SimulatorConfig | None = None, **options: Any) -> Iterator[CometlySimulator]:
    """Start a simulator on a free loopback port in a background thread; stop it on exit.

    >>> with run_simulator(window_seconds=1.0, export_rows=10) as sim:
    ...     requests.post(sim.api_base + "/events/track", ...)
    """
    sim = CometlySimulator(config, **options)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


# --- CLI ------------------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=INTEGER, got {text!r}")
    try:
        return key.strip(), int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected NAME=INTEGER, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    d = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m cometly_provider.testing.simulator",
        description=(
            "Run a local Cometly API simulator in the foreground. Prints "
            "'Cometly simulator listening on http://HOST:PORT' once ready; stop it with Ctrl-C or SIGTERM. "
            "The API is under /public-api/v1; inspect and control the simulator over HTTP under "
            "/_simulator/ (see cometly_provider.testing.SimulatorClient)."
        ),
        # Options default to "not given", so --config-json values are only overridden by explicit options.
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add("--host", help=f"interface to bind (default: {d.host})")
    add("--port", type=int, help="TCP port; 0 picks a free port (default: 0)")
    add(
        "--api-key",
        help="the valid API key (default: $COMETLY_SIMULATOR_API_KEY, else test-api-key); never printed",
    )
    add(
        "--inactive-api-key",
        action="append",
        metavar="KEY",
        help="a key that authenticates but whose subscription is inactive (403); repeatable",
    )
    add(
        "--window-seconds",
        type=float,
        help=f"rate-limit window length, the API's minute (default: {d.window_seconds})",
    )
    add(
        "--rate-limit",
        action="append",
        type=_key_value,
        metavar="ENDPOINT=N",
        help="requests per window for one endpoint; endpoints and defaults: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_RATE_LIMITS.items())
        + "; repeatable",
    )
    add("--no-rate-limiting", action="store_true", help="disable rate limiting (headers are still sent)")
    add("--queued-seconds", type=float, help=f"time an export stays queued (default: {d.queued_seconds})")
    add(
        "--processing-seconds",
        type=float,
        help=f"minimum time an export stays processing (default: {d.processing_seconds})",
    )
    add(
        "--export-outcome",
        choices=EXPORT_OUTCOMES,
        help=f"outcome of new exports; stuck never completes (default: {d.export_outcome})",
    )
    add("--export-failure-message", help="message of failed exports")
    add("--export-rows", type=int, help=f"events per export, 0 to millions (default: {d.export_rows})")
    add(
        "--export-rows-for",
        action="append",
        type=_key_value,
        metavar="YYYY-MM-DD=N",
        help="events in exports of one date; repeatable",
    )
    add(
        "--row-padding-bytes",
        type=int,
        help="high-entropy padding added to event_url (when requested) to make big files fast (default: 0)",
    )
    add("--gzip-level", type=int, help=f"gzip level of export files, 0-9 (default: {d.gzip_level})")
    add(
        "--gzip-workers", type=int, help="compression threads per export; 0 = one per CPU, max 4 (default: 0)"
    )
    add("--seed", type=int, help=f"seed of the generated export content (default: {d.seed})")
    add(
        "--url-ttl-seconds",
        type=float,
        help=f"lifetime of presigned download URLs (default: {d.url_ttl_seconds})",
    )
    add("--export-id-start", type=int, help=f"first export id (default: {d.export_id_start})")
    add("--work-dir", help="directory for generated export files (default: the system temp dir)")
    add("--access-log", action="store_true", help="log method, path (no query) and status to stderr")
    add(
        "--config-json",
        metavar="JSON",
        help="a JSON object of SimulatorConfig options (e.g. '{\"export_rows\": 10}'); explicit options win",
    )
    return parser


def config_from_args(argv: list[str] | None = None) -> SimulatorConfig:
    """Build a SimulatorConfig from the command line (``--config-json`` first, then explicit options)."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    config = SimulatorConfig()
    try:
        if "config_json" in given:
            config.update(**json.loads(given.pop("config_json")))
        env_key = os.environ.get("COMETLY_SIMULATOR_API_KEY")
        if env_key and "api_key" not in given:
            given["api_key"] = env_key
        if "inactive_api_key" in given:
            given["inactive_api_keys"] = given.pop("inactive_api_key")
        if "rate_limit" in given:
            given["rate_limits"] = {**config.rate_limits, **dict(given.pop("rate_limit"))}
        if "export_rows_for" in given:
            given["export_rows_by_date"] = {
                **config.export_rows_by_date,
                **dict(given.pop("export_rows_for")),
            }
        if given.pop("no_rate_limiting", False):
            given["rate_limiting_enabled"] = False
        config.update(**given)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    return config


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    sim = CometlySimulator(config)

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    sim.start()
    try:
        print(f"Cometly simulator listening on {sim.base_url}", flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
