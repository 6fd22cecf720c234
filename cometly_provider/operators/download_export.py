"""DownloadEventExportOperator: stream a completed Cometly export into S3, GCS or a local file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import Asset, BaseOperator

from cometly_provider.exceptions import CometlyExportFailedError, CometlyInputError, CometlyTaskKilled
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.utils.redaction import (
    export_id_of_redacted_url,
    is_redacted_url,
    mask_presigned_url,
    redact_url,
)
from cometly_provider.utils.rendered import parse_rendered_literal
from cometly_provider.utils.storage import (
    GZIP_CONTENT_TYPE,
    NDJSON_CONTENT_TYPE,
    Destination,
    check_part_size,
    check_scheme_available,
    open_writer,
    parse_destination,
    static_scheme,
)
from cometly_provider.utils.transfer import ExportTransfer, MiB

if TYPE_CHECKING:
    import jinja2
    from airflow.providers.common.compat.sdk import Context

MAX_CONCURRENCY_LIMIT = 64


class DownloadEventExportOperator(BaseOperator):
    """
    Stream a completed Cometly event export into ``s3://``, ``gs://`` or ``file://``, in constant memory.

    The gzipped NDJSON flows from the presigned URL through a gzip integrity check (CRC and length,
    record count) and a sha256 into a multipart (S3) / resumable (GCS) upload or a temp file
    (local), which becomes visible only once the whole stream checked out. A cut connection or an
    expired URL is resumed from the byte already received (a fresh URL is fetched when
    ``export_id`` is known). Peak memory is about ``part_size * (max_concurrency + 1)``, plus up to
    8 MiB of chunks queued for the gzip check (run on its own thread) and the interpreter, whatever
    the file size.

    Returns (XCom) ``destination``, ``bytes_written``, ``records``, ``sha256`` (of the bytes written),
    ``compressed``, ``duration_s``, ``mb_per_s``, ``export_id``, ``bytes_downloaded`` and ``resumes``.
    Unless ``outlets`` is given, the destination is declared as an Asset outlet: the URI itself, or
    for a templated destination the static prefix before the first ``{{`` (the rendered URI and
    the stats go in the asset event's ``extra``).

    :param download_url: the presigned URL, or the sensor's result (the dict, or its
        ``download_url``: the sensor stores it without its signature, and a fresh signed URL is
        then fetched from the export id it carries). Templated.
    :param export_id: the export, to fetch a (fresh) URL from the API; with no ``download_url`` the
        export must be ``completed``. Templated.
    :param destination: ``s3://bucket/key``, ``gs://bucket/key`` or ``file:///path``. Templated.
    :param destination_conn_id: Airflow connection for the destination (default ``aws_default``
        for S3, ``google_cloud_default`` for GCS; unused for files).
    :param cometly_conn_id: the Cometly connection (used to refresh the URL and for HTTP settings).
    :param decompress: write decompressed NDJSON instead of the gzip bytes as served.
    :param replace: overwrite an existing destination object; ``False`` fails if it exists.
    :param part_size: bytes per multipart part / resumable chunk, a multiple of 256 KiB
        (S3: at least 5 MiB). The 8 MiB default measured both faster and leaner than 16 MiB
        into S3 (``docs/benchmarks.md``). Parts grow as needed to stay within S3's 10,000-part cap
        (sized up front from the download's length; doubling after every 1,000 parts when the size is
        unknown, e.g. with ``decompress=True``).
    :param max_concurrency: S3 parts uploaded in parallel.
    :param max_resume_attempts: resumptions of the download (cuts, expired URLs) before failing.
    :param hook_params: extra keyword arguments for :class:`CometlyHook`.
    """

    template_fields: Sequence[str] = ("download_url", "export_id", "destination")
    template_fields_renderers = {"download_url": "json"}
    ui_color = "#e8f7e4"
    #: Seconds between progress log lines.
    progress_interval_s: float = 10.0
    #: Seconds before the first resume attempt (doubling after each).
    resume_wait_s: float = 0.5

    def __init__(
        self,
        *,
        download_url: str | Mapping[str, Any] | None = None,
        export_id: int | str | None = None,
        destination: str,
        destination_conn_id: str | None = None,
        cometly_conn_id: str = CometlyHook.default_conn_name,
        decompress: bool = False,
        replace: bool = True,
        part_size: int = 8 * MiB,
        max_concurrency: int = 4,
        max_resume_attempts: int = 5,
        hook_params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.asset: Asset | None = None
        if "outlets" not in kwargs:
            self.asset = default_asset(destination)
            if self.asset is not None:
                kwargs["outlets"] = [self.asset]
        super().__init__(**kwargs)
        self.download_url = download_url
        self.export_id = export_id
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.cometly_conn_id = cometly_conn_id
        self.decompress = decompress
        self.replace = replace
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.max_resume_attempts = max_resume_attempts
        self.hook_params = dict(hook_params or {})
        self._interruptible = False
        # Fail at parse time for what templates cannot change.
        _check_settings(part_size, max_concurrency, max_resume_attempts, decompress, replace)
        scheme = static_scheme(destination)
        if scheme is not None:
            check_scheme_available(scheme, destination)

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        super().render_template_fields(context, jinja_env)
        # Registered before Airflow stores the rendered fields, so the signature is masked there too.
        value = _as_mapping(self.download_url)
        url = value.get("download_url") if isinstance(value, Mapping) else value
        if isinstance(url, str):
            mask_presigned_url(url)

    def execute(self, context: Context) -> dict[str, Any]:
        destination, url, export_id = self._validated()
        part_size = check_part_size(self.part_size, destination.scheme)
        hook = CometlyHook(self.cometly_conn_id, **self.hook_params)
        writer = open_writer(
            destination,
            conn_id=self.destination_conn_id,
            replace=self.replace,
            part_size=part_size,
            max_concurrency=self.max_concurrency,
            content_type=NDJSON_CONTENT_TYPE if self.decompress else GZIP_CONTENT_TYPE,
            log=self.log,
        )
        writer.begin()  # replace=False fails here, before any request to Cometly

        def refresh() -> str:
            assert export_id is not None
            return _completed_url(hook, export_id)

        self._interruptible = True
        try:
            if url is None:
                assert export_id is not None
                url = refresh()
            self.log.info(
                "Downloading Cometly export %s from %s to %s (%s)",
                export_id if export_id is not None else "(id unknown)",
                redact_url(url),
                destination.uri,
                "decompressed NDJSON" if self.decompress else "gzip as served",
            )
            transfer = ExportTransfer(
                open_download=lambda u, offset: hook.open_download(u, offset=offset),
                writer=writer,
                refresh_url=refresh if export_id is not None else None,
                decompress=self.decompress,
                max_resume_attempts=self.max_resume_attempts,
                progress_interval=self.progress_interval_s,
                resume_wait=self.resume_wait_s,
                log=self.log,
            )
            result = transfer.run(url)
        except BaseException:
            self._interruptible = False
            writer.abort()  # also covers a failure before the transfer started
            raise
        finally:
            self._interruptible = False
            hook.close()

        summary: dict[str, Any] = {
            "destination": destination.uri,
            "bytes_written": result.bytes_written,
            "records": result.records,
            "sha256": result.sha256,
            "compressed": not self.decompress,
            "duration_s": round(result.duration_s, 3),
            "mb_per_s": round(result.mb_per_s, 2),
            "export_id": export_id,
            "bytes_downloaded": result.bytes_downloaded,
            "resumes": result.resumes,
        }
        self.log.info(
            "Wrote %s: %d bytes, %d records, sha256 %s, in %.1f s (%.1f MB/s, %d resume(s))",
            destination.uri,
            result.bytes_written,
            result.records,
            result.sha256,
            result.duration_s,
            result.mb_per_s,
            result.resumes,
        )
        if self.asset is not None:
            context["outlet_events"][self.asset].extra.update(
                {k: summary[k] for k in ("destination", "bytes_written", "records", "sha256", "export_id")}
            )
        return summary

    def on_kill(self) -> None:
        """Interrupt a running transfer so that its failure path aborts the upload.

        Airflow calls this from the task's SIGTERM handler, in the main thread, and does not stop
        ``execute`` itself. Raising here unwinds the transfer through ``writer.abort()``, so a killed
        task leaves no partial object and no orphaned multipart upload. The error is a
        ``BaseException``, so no ``except Exception`` on the way (urllib3, the hook) can swallow it,
        and not ``AirflowTaskTerminated`` (final for the Task SDK): the task keeps its retries.
        """
        if getattr(self, "_interruptible", False):
            self._interruptible = False
            raise CometlyTaskKilled(
                "the task was killed during the export download; the upload was aborted and the "
                "task can be retried"
            )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (when its provider is installed): Cometly events in, the destination out."""
        from cometly_provider.lineage import export_lineage

        hook = CometlyHook(self.cometly_conn_id, **self.hook_params)
        return export_lineage(hook, self.destination)

    def _validated(self) -> tuple[Destination, str | None, int | None]:
        """Check every input before any request; errors name the field and never echo a signature."""
        _check_settings(
            self.part_size, self.max_concurrency, self.max_resume_attempts, self.decompress, self.replace
        )
        destination = parse_destination(self.destination)
        export_id = _check_export_id(self.export_id)
        raw = _as_mapping(self.download_url)
        if isinstance(raw, Mapping):
            if "download_url" not in raw:
                raise CometlyInputError(
                    "download_url is a dict without a 'download_url' key (keys: "
                    f"{sorted(map(str, raw))}); pass the sensor's result or the URL itself",
                    field="download_url",
                )
            if export_id is None and raw.get("export_id") is not None:
                export_id = _check_export_id(raw["export_id"], field="download_url['export_id']")
            raw = raw["download_url"]
        if isinstance(raw, str) and is_redacted_url(raw.strip()):
            # The sensor's stored form: no signature, so a fresh URL comes from the export id.
            if export_id is None:
                carried = export_id_of_redacted_url(raw.strip())
                if carried is None:
                    raise CometlyInputError(
                        f"download_url={raw.strip()!r} has its signature redacted and names no "
                        "export: pass export_id (or the sensor's whole result) so a freshly signed "
                        "URL can be fetched",
                        field="download_url",
                    )
                export_id = _check_export_id(carried, field="download_url (export id)")
            raw = None
        url = None if raw is None or (raw == "" and export_id is not None) else _check_url(raw)
        if url is None and export_id is None:
            raise CometlyInputError(
                "nothing to download: pass download_url (the presigned URL or the sensor's result) "
                "and/or export_id",
                field="download_url",
            )
        return destination, url, export_id


def _as_mapping(value: object) -> object:
    """The sensor's dict, also when a template rendered it as text (no native rendering)."""
    if not isinstance(value, str) or not value.strip().startswith("{") or not value.strip().endswith("}"):
        return value
    try:
        parsed = parse_rendered_literal(value.strip())
    except ValueError:
        return value
    return parsed if isinstance(parsed, Mapping) else value


def default_asset(destination: object) -> Asset | None:
    """The Asset a destination declares: itself, or the static prefix of a templated one."""
    if not isinstance(destination, str):
        return None
    uri = destination.split("{{", 1)[0].split("{%", 1)[0]
    parts = urlsplit(uri)
    if parts.scheme not in ("s3", "gs", "file") or "://" not in uri:
        return None
    if parts.scheme != "file" and not parts.netloc:
        return None  # the bucket itself is templated: no meaningful static URI
    try:
        return Asset(uri)
    except (ValueError, TypeError):
        return None


def _check_settings(
    part_size: object,
    max_concurrency: object,
    max_resume_attempts: object,
    decompress: object,
    replace: object,
) -> None:
    check_part_size(part_size)
    if (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or not 1 <= max_concurrency <= MAX_CONCURRENCY_LIMIT
    ):
        raise CometlyInputError(
            f"max_concurrency={max_concurrency!r} is invalid: expected an integer from 1 to "
            f"{MAX_CONCURRENCY_LIMIT}",
            field="max_concurrency",
        )
    if (
        isinstance(max_resume_attempts, bool)
        or not isinstance(max_resume_attempts, int)
        or max_resume_attempts < 0
    ):
        raise CometlyInputError(
            f"max_resume_attempts={max_resume_attempts!r} is invalid: expected an integer >= 0",
            field="max_resume_attempts",
        )
    for name, value in (("decompress", decompress), ("replace", replace)):
        if not isinstance(value, bool):
            raise CometlyInputError(f"{name}={value!r} is invalid: expected True or False", field=name)


def _check_export_id(value: object, *, field: str = "export_id") -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise CometlyInputError(
            f"{field}={value!r} is invalid: expected the integer export_id from Create Event Export",
            field=field,
        )
    text = str(value).strip()
    if not text.isdigit() or not text.isascii():
        raise CometlyInputError(
            f"{field}={value!r} is invalid: expected the integer export_id from Create Event Export",
            field=field,
        )
    return int(text)


def _check_url(value: object) -> str:
    allowed = "an http(s) presigned URL (the download_url of a completed export)"
    if not isinstance(value, str):
        raise CometlyInputError(
            f"download_url is invalid: got {type(value).__name__}, expected {allowed} "
            "or the sensor's result dict",
            field="download_url",
        )
    url = value.strip()
    if not url:
        raise CometlyInputError(f"download_url is empty: expected {allowed}", field="download_url")
    try:
        parts = urlsplit(url)
        safe = redact_url(url)
    except ValueError:
        parts, safe = None, "<unparseable>"
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        scheme = f"scheme {parts.scheme!r}" if parts is not None and parts.scheme else "no scheme"
        raise CometlyInputError(
            f"download_url={safe!r} is invalid ({scheme}): expected {allowed}", field="download_url"
        )
    mask_presigned_url(url)
    return url


def _completed_url(hook: CometlyHook, export_id: int) -> str:
    """A fresh download URL for a completed export (each status poll signs a new one)."""
    status = hook.get_event_export(export_id)
    state = status.get("status")
    if state == "failed":
        raise CometlyExportFailedError(
            f"Cometly export {export_id} failed: {status.get('message') or '(no message)'}"
        )
    url = status.get("download_url")
    if state != "completed" or not isinstance(url, str) or not url:
        raise CometlyInputError(
            f"Cometly export {export_id} is {state!r}, not 'completed': wait for it with "
            "EventExportSensor before downloading",
            field="export_id",
        )
    return _check_url(url)
