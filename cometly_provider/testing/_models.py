"""Configuration and inspection records shared by the simulator, its handle and its HTTP client."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, cast

API_PREFIX = "/public-api/v1"
#: Endpoint names used by rate limits, fault injection and request records.
ENDPOINTS: tuple[str, ...] = (
    "track",
    "export_create",
    "export_status",
    "contacts_export_create",
    "contacts_export_status",
    "download",
)
#: Fault kinds accepted by ``inject``.
FAULT_KINDS: tuple[str, ...] = ("status", "reset", "delay", "cut", "expire")
#: Faults that only make sense on the presigned download.
DOWNLOAD_ONLY_FAULTS: frozenset[str] = frozenset({"cut", "expire"})
EXPORT_OUTCOMES: tuple[str, ...] = ("completed", "failed", "stuck")
#: Requests per window (a minute by default) per API key, per endpoint (README.md "Rate limits").
DEFAULT_RATE_LIMITS: dict[str, int] = {
    "track": 1000,
    "export_create": 5,
    "export_status": 30,
    # Not stated consistently by the vendor; every response says the real one in X-RateLimit-Limit.
    "contacts_export_create": 5,
    "contacts_export_status": 30,
    "list": 7,
}


@dataclass
class SimulatorConfig:
    """Every option of the simulator. The handle's ``config`` is live: changes apply to later requests."""

    api_key: str = "test-api-key"
    #: Keys that authenticate but belong to an inactive subscription: 403.
    inactive_api_keys: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    #: Length of the rate-limit window (the API's "minute"); shorten it in tests.
    window_seconds: float = 60.0
    #: Per-endpoint limits; endpoints missing here use DEFAULT_RATE_LIMITS.
    rate_limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    rate_limiting_enabled: bool = True
    queued_seconds: float = 0.2
    processing_seconds: float = 0.5
    #: Outcome of new exports unless overridden by ``next_exports_outcome``.
    export_outcome: str = "completed"
    export_failure_message: str = "Export failed while generating the file. Please try again."
    #: Events per export (after filtering); multi-touch models give more lines than events.
    export_rows: int = 1000
    #: Per-date override of ``export_rows`` ("YYYY-MM-DD" -> events).
    export_rows_by_date: dict[str, int] = field(default_factory=dict)
    #: Contacts per contacts export.
    contact_export_rows: int = 500
    #: Deterministic high-entropy padding (bytes) added to ``event_url`` when that field is requested.
    row_padding_bytes: int = 0
    gzip_level: int = 6
    #: Compression threads per export (0: one per CPU, at most 4).
    gzip_workers: int = 0
    seed: int = 0
    #: Lifetime of presigned download URLs (the API's 15 minutes).
    url_ttl_seconds: float = 900.0
    export_id_start: int = 1
    #: Directory for generated files (a private temp dir inside it is removed on stop).
    work_dir: str | None = None
    #: Write a redacted access log (method, path, status; never headers or query strings) to stderr.
    access_log: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulatorConfig:
        config = cls()
        config.update(**data)
        return config

    def update(self, **changes: Any) -> None:
        """Set options by name, checking names and values (raises ValueError / TypeError)."""
        names = {f.name: f for f in dataclasses.fields(self)}
        for name in changes:
            if name not in names:
                raise ValueError(f"unknown simulator option {name!r}; known: {', '.join(sorted(names))}")
        merged = {**dataclasses.asdict(self), **changes}
        _check(merged)
        for name, value in changes.items():
            if name in ("window_seconds", "queued_seconds", "processing_seconds", "url_ttl_seconds"):
                value = float(value)
            elif name in ("rate_limits", "export_rows_by_date"):
                value = {str(k): int(v) for k, v in value.items()}
            elif name == "inactive_api_keys":
                value = [str(k) for k in value]
            setattr(self, name, value)


def _check(c: dict[str, Any]) -> None:
    def number(name: str, minimum: float, integer: bool = False) -> None:
        value = c[name]
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if cast("float", value) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")

    if not isinstance(c["api_key"], str) or not c["api_key"]:
        raise ValueError("api_key must be a non-empty string")
    if not isinstance(c["inactive_api_keys"], list | tuple | set | frozenset):
        raise TypeError("inactive_api_keys must be a list of strings")
    for name in ("window_seconds", "queued_seconds", "processing_seconds"):
        number(name, 0)
    number("url_ttl_seconds", 0)
    for name in ("export_rows", "contact_export_rows", "row_padding_bytes", "gzip_workers", "port"):
        number(name, 0, integer=True)
    number("export_id_start", 1, integer=True)
    number("seed", -(2**63), integer=True)
    number("gzip_level", 0, integer=True)
    if c["gzip_level"] > 9:
        raise ValueError(f"gzip_level must be 0..9, got {c['gzip_level']!r}")
    if c["export_outcome"] not in EXPORT_OUTCOMES:
        raise ValueError(f"export_outcome must be one of {EXPORT_OUTCOMES}, got {c['export_outcome']!r}")
    for name in ("rate_limits", "export_rows_by_date"):
        if not isinstance(c[name], dict):
            raise TypeError(f"{name} must be a dict")
        for key, value in c[name].items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}[{key!r}] must be a non-negative integer, got {value!r}")
    for key in c["rate_limits"]:
        if key not in DEFAULT_RATE_LIMITS:
            raise ValueError(
                f"rate_limits: unknown endpoint {key!r}; known: {', '.join(DEFAULT_RATE_LIMITS)}"
            )


@dataclass(frozen=True)
class RequestRecord:
    """One API or download request as the simulator saw it (admin requests are not recorded)."""

    timestamp: float  # time.time() when the request arrived
    method: str
    path: str  # without the query string
    endpoint: str  # one of ENDPOINTS, or "unknown" for unmatched API routes
    status: int | None  # None when the connection was reset without a response
    headers: dict[str, str]
    json: Any  # parsed JSON body, or None
    query: str = ""
    fault: str | None = None  # the injected fault kind that shaped the response, if any

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)


@dataclass(frozen=True)
class ExportRecord:
    """Snapshot of one export job (``status`` is computed at the time of the snapshot)."""

    export_id: int
    status: str
    params: dict[str, Any]
    created_at: str
    outcome: str  # planned outcome: completed | failed | stuck
    message: str | None = None
    completed_at: str | None = None
    object_key: str = ""
    rows: int = 0  # events the export was asked to contain
    lines: int | None = None  # lines in the file once generated (> rows with multi-touch models)
    size: int | None = None  # bytes of gzip once generated
    etag: str | None = None
    kind: str = "events"  # or "contacts"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportRecord:
        return cls(**data)


@dataclass
class FaultRule:
    """An injected fault; see ``CometlySimulator.inject``."""

    fault_id: int
    endpoint: str
    kind: str
    times: int | None = 1
    after: int = 0
    every: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    matched: int = 0  # matching requests seen so far
    applied: int = 0  # times the fault fired

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.applied >= self.times

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRule:
        return cls(**data)


def check_fault(
    endpoint: str, kind: str, times: int | None, after: int, every: int, params: dict[str, Any]
) -> None:
    """Validate ``inject`` arguments (ValueError), so a typo fails the test that made it."""
    if endpoint != "*" and endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; use one of {', '.join(ENDPOINTS)} or '*'")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
    if kind in DOWNLOAD_ONLY_FAULTS and endpoint not in ("download", "*"):
        raise ValueError(f"fault {kind!r} only applies to the 'download' endpoint")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ValueError(f"times must be a positive integer or None, got {times!r}")
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"after must be a non-negative integer, got {after!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    allowed = {
        "status": {"code", "message", "retry_after", "body", "content_type"},
        "reset": set(),
        "delay": {"seconds"},
        "cut": {"at_byte"},
        "expire": set(),
    }[kind]
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(
            f"fault {kind!r} takes no parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    if kind == "status":
        code = params.get("code", 500)
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"status fault needs an HTTP status code, got {code!r}")
    if kind == "delay":
        seconds = params.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"delay fault needs seconds >= 0, got {seconds!r}")
    if kind == "cut":
        at_byte = params.get("at_byte", 0)
        if isinstance(at_byte, bool) or not isinstance(at_byte, int) or at_byte < 0:
            raise ValueError(f"cut fault needs at_byte >= 0, got {at_byte!r}")
