"""DownloadExportOperator: stream a completed Cometly export (any kind) into S3, GCS or a local file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import Asset, BaseOperator

from cometly_provider.checks import check_bool, check_int, check_part_size
from cometly_provider.exceptions import CometlyInputError, CometlyTaskKilled
from cometly_provider.export_kinds import export_kind
from cometly_provider.exports import ExportDownloadSource, ExportRef, PresignedUrlSource, as_mapping
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.utils.redaction import is_redacted_url, mask_presigned_url, redact_url
from cometly_provider.utils.storage import (
    GZIP_CONTENT_TYPE,
    NDJSON_CONTENT_TYPE,
    Destination,
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


class DownloadExportOperator(BaseOperator):
    """
    Stream a completed Cometly export into ``s3://``, ``gs://`` or ``file://``, in constant memory.

    **It takes the export, not a URL.** Give it the sensor's result (``export=wait.output``), or
    ``export_id`` and ``kind``; it asks the API for a freshly signed URL itself when it starts and
    again after an expiry or a cut, so no signed URL ever travels through XCom. Users who already
    hold a presigned URL can pass it as ``download_url`` (it cannot be renewed once it expires).

    The gzipped NDJSON flows from the presigned URL through a gzip integrity check (CRC and length,
    record count) and a sha256 into a multipart (S3) / resumable (GCS) upload or a temp file
    (local), which becomes visible only once the whole stream checked out. A cut connection or an
    expired URL is resumed from the byte already received (a fresh URL is fetched when
    ``export_id`` is known). Peak memory is about ``part_size * (max_concurrency + 1)``, plus up to
    8 MiB of chunks queued for the gzip check (run on its own thread) and the interpreter, whatever
    the file size.

    Returns (XCom) ``destination``, ``bytes_written``, ``records``, ``sha256`` (of the bytes written),
    ``compressed``, ``duration_s``, ``mb_per_s``, ``export_id``, ``kind``, ``bytes_downloaded`` and
    ``resumes``.
    Unless ``outlets`` is given, the destination is declared as an Asset outlet: the URI itself, or
    for a templated destination the static prefix before the first ``{{`` (the rendered URI and
    the stats go in the asset event's ``extra``).

    :param export: the export to download: the sensor's (or a waiting create operator's) result;
        templated (normally ``wait_for_export.output``). The export must be ``completed``.
    :param export_id: the export by id instead (with ``kind``); templated.
    :param kind: ``"events"`` or ``"contacts"``; default: what ``export`` says, else events.
    :param download_url: a presigned URL you already have; templated. As in 0.1.0, the sensor's
        result (or its stored ``download_url``) given here is taken as ``export``.
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

    template_fields: Sequence[str] = ("export", "export_id", "download_url", "destination")
    template_fields_renderers = {"export": "json", "download_url": "json"}
    ui_color = "#e8f7e4"
    #: Seconds between progress log lines.
    progress_interval_s: float = 10.0
    #: Seconds before the first resume attempt (doubling after each).
    resume_wait_s: float = 0.5

    def __init__(
        self,
        *,
        export: Mapping[str, Any] | str | None = None,
        export_id: int | str | None = None,
        kind: str | None = None,
        download_url: str | Mapping[str, Any] | None = None,
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
        self.export = export
        self.export_id = export_id
        self.kind = export_kind(kind).name if kind is not None else None
        self.download_url = download_url
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
        value = as_mapping(self.download_url)
        url = value.get("download_url") if isinstance(value, Mapping) else value
        if isinstance(url, str):
            mask_presigned_url(url)

    def execute(self, context: Context) -> dict[str, Any]:
        destination, wanted = self._validated()
        part_size = check_part_size(self.part_size, destination.scheme)
        hook = CometlyHook(self.cometly_conn_id, **self.hook_params)
        source = (
            ExportDownloadSource(hook, wanted)
            if isinstance(wanted, ExportRef)
            else PresignedUrlSource(hook, wanted)
        )
        ref = wanted if isinstance(wanted, ExportRef) else None
        writer = open_writer(
            destination,
            conn_id=self.destination_conn_id,
            replace=self.replace,
            part_size=part_size,
            max_concurrency=self.max_concurrency,
            content_type=NDJSON_CONTENT_TYPE if self.decompress else GZIP_CONTENT_TYPE,
            log=self.log,
            caller=type(self).__name__,
        )
        writer.begin()  # replace=False fails here, before any request to Cometly

        self._interruptible = True
        try:
            self.log.info(
                "Downloading %s to %s (%s)",
                source.description,
                destination.uri,
                "decompressed NDJSON" if self.decompress else "gzip as served",
            )
            transfer = ExportTransfer(
                source=source,
                writer=writer,
                decompress=self.decompress,
                max_resume_attempts=self.max_resume_attempts,
                progress_interval=self.progress_interval_s,
                resume_wait=self.resume_wait_s,
                log=self.log,
            )
            result = transfer.run()
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
            "export_id": ref.export_id if ref else None,
            "kind": ref.kind.name if ref else None,
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
                {
                    k: summary[k]
                    for k in ("destination", "bytes_written", "records", "sha256", "export_id", "kind")
                }
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
        """OpenLineage (when its provider is installed): the Cometly export in, the destination out."""
        from cometly_provider.lineage import export_lineage

        hook = CometlyHook(self.cometly_conn_id, **self.hook_params)
        export = as_mapping(self.export)
        kind = self.kind or (export.get("kind") if isinstance(export, Mapping) else None) or "events"
        return export_lineage(hook, self.destination, kind=kind)

    def _validated(self) -> tuple[Destination, ExportRef | str]:
        """Check every input before any request: the destination, and the export (or URL) to read.

        Errors name the field and never echo a signature.
        """
        _check_settings(
            self.part_size, self.max_concurrency, self.max_resume_attempts, self.decompress, self.replace
        )
        destination = parse_destination(self.destination)
        export, url = self.export, as_mapping(self.download_url)
        field = "export"
        if _blank(export) and (
            isinstance(url, Mapping) or (isinstance(url, str) and is_redacted_url(url.strip()))
        ):
            # 0.1.0 style: the sensor's result (or its stored URL) passed as download_url.
            export, url, field = url, None, "download_url"
        ref: ExportRef | None = None
        if not _blank(self.export_id):
            ref = ExportRef.of(self.kind or "events", self.export_id)
            if not _blank(export) and ExportRef.parse(export, kind=self.kind, field=field) != ref:
                raise CometlyInputError(
                    f"export_id={self.export_id!r} is invalid: {field} names another export "
                    f"({ExportRef.parse(export, kind=self.kind, field=field).label}); pass one of them",
                    field="export_id",
                )
        elif not _blank(export):
            ref = ExportRef.parse(export, kind=self.kind, field=field)
        if url is not None and not (url == "" and ref is not None):
            checked = _check_url(url)
            if ref is None:
                return destination, checked
            self.log.info(
                "Both an export and a presigned URL were given: downloading %s with fresh URLs", ref.label
            )
        if ref is None:
            raise CometlyInputError(
                "export=None is invalid: expected the export to download (the sensor's result, or "
                "export_id and kind) or a presigned download_url",
                field="export",
            )
        return destination, ref


#: 0.1.0 name: the same operator.
DownloadEventExportOperator = DownloadExportOperator


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


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
    check_int(max_concurrency, "max_concurrency", minimum=1, maximum=MAX_CONCURRENCY_LIMIT)
    check_int(max_resume_attempts, "max_resume_attempts", minimum=0)
    check_bool(decompress, "decompress")
    check_bool(replace, "replace")


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
