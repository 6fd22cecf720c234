"""Faults during the export download: cuts at any byte, URLs expiring mid-download, S3 refusing a part.

After each: the landed object is the export byte for byte (sha256 of a direct download from the
simulator) or absent, and no multipart upload is left in the bucket.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cometly_provider.exceptions import CometlyDownloadError, CometlyDownloadExpiredError
from tests.reliability.invariants import (
    assert_failed_with,
    assert_identical_or_absent,
    assert_local_identical_or_absent,
    assert_no_orphaned_uploads,
    direct_download,
)
from tests.reliability.pipeline import (
    BIG_PADDING,
    BIG_ROWS,
    MiB,
    completed_export,
    download_context,
    downloader,
    file_uri,
)
from tests.reliability.s3_proxy import flaky_s3_proxy

# Where a cut lands in a gzip file of `size` bytes: the 10-byte header, the deflate data, the
# 8-byte trailer (CRC-32, then length), the very last byte.
CUTS = {
    "at_0": lambda size: 0,
    "in_header_5": lambda size: 5,
    "in_data_half": lambda size: size // 2,
    "trailer_start": lambda size: size - 8,
    "in_trailer_size_minus_4": lambda size: size - 4,
    "last_byte_size_minus_1": lambda size: size - 1,
}


def _ranges(sim: Any) -> list[tuple[str | None, int | None, str | None]]:
    return [(r.fault, r.status, r.header("Range")) for r in sim.requests_for("download")]


@pytest.mark.parametrize("where", list(CUTS))
def test_cut_at_any_offset_resumes_to_an_identical_file(sim: Any, tmp_path: Path, where: str) -> None:
    status = completed_export(sim, rows=300)
    direct = direct_download(sim, status["export_id"])
    cut = CUTS[where](direct.size)
    downloads_before = len(sim.requests_for("download"))
    sim.inject("download", "cut", at_byte=cut)
    path = tmp_path / "out" / "export.ndjson.gz"

    result = downloader(download_url=status, destination=file_uri(path)).execute(download_context())  # type: ignore[arg-type]

    downloads = sim.requests_for("download")[downloads_before:]
    assert [d.fault for d in downloads] == ["cut", None]
    resumed_from = downloads[1].header("Range")
    # Resumed from a byte it had fully taken in (never past the cut), or from the start.
    assert resumed_from is None or 0 < int(resumed_from.removeprefix("bytes=").removesuffix("-")) <= cut
    assert result["resumes"] == 1
    assert (result["bytes_downloaded"], result["sha256"]) == (direct.size, direct.sha256)
    assert_local_identical_or_absent(path, direct, landed=True)


@pytest.mark.parametrize(
    "where", ["in_header_5", "trailer_start", "in_trailer_size_minus_4", "last_byte_size_minus_1"]
)
def test_cut_without_resume_never_lands_a_partial_file(sim: Any, tmp_path: Path, where: str) -> None:
    status = completed_export(sim, rows=300)
    direct = direct_download(sim, status["export_id"])
    sim.inject("download", "cut", at_byte=CUTS[where](direct.size))
    path = tmp_path / "out" / "export.ndjson.gz"
    op = downloader(download_url=status, destination=file_uri(path), max_resume_attempts=0)

    with pytest.raises(CometlyDownloadError) as info:
        op.execute(download_context())  # type: ignore[arg-type]

    assert_failed_with(
        info.value, CometlyDownloadError, "export download failed at byte", "max_resume_attempts"
    )
    assert_local_identical_or_absent(path, direct, landed=False)


def test_multipart_download_cut_three_times_at_random_offsets(
    sim: Any, bucket: tuple[Any, str], capfd: pytest.CaptureFixture[str]
) -> None:
    client, name = bucket
    status = completed_export(sim, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = direct_download(sim, status["export_id"])
    assert direct.size > 12 * MiB  # three 5 MiB parts
    seed = random.randrange(2**32)
    cuts = sorted(random.Random(seed).sample(range(1, direct.size // 3), 3))
    for cut in cuts:  # each rule fires once, in order: the first request, then each resume
        sim.inject("download", "cut", at_byte=cut)

    result = downloader(
        download_url=status, destination=f"s3://{name}/cometly/e.ndjson.gz", part_size=5 * MiB
    ).execute(download_context())  # type: ignore[arg-type]

    assert [f for f, _, _ in _ranges(sim)][-4:] == ["cut", "cut", "cut", None], (seed, cuts)
    assert result["resumes"] == 3
    assert result["sha256"] == direct.sha256
    assert_identical_or_absent(client, name, "cometly/e.ndjson.gz", direct, landed=True)
    assert client.head_object(Bucket=name, Key="cometly/e.ndjson.gz")["ETag"].endswith('-3"')
    assert_no_orphaned_uploads(client, name)
    assert capfd.readouterr().out.count("the download was cut") == 3


# --- the presigned URL expires mid-download -----------------------------------------------------------


def test_url_expired_at_the_resume_without_export_id_fails_and_lands_nothing(
    sim: Any, bucket: tuple[Any, str]
) -> None:
    client, name = bucket
    status = completed_export(sim, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = direct_download(sim, status["export_id"])
    # URLs live 3-4 s (whole seconds, rounded up): the first request comes well within that (a
    # margin for a loaded machine), the resume 4.2 s after the cut, which happens after two 5 MiB
    # parts were uploaded.
    sim.update_config(url_ttl_seconds=3)
    url, _ = sim.presign(status["export_id"])
    sim.inject("download", "cut", at_byte=11_000_000)
    op = downloader(download_url=url, destination=f"s3://{name}/e.ndjson.gz", part_size=5 * MiB)
    op.resume_wait_s = 4.2

    with pytest.raises(CometlyDownloadExpiredError) as info:
        op.execute(download_context())  # type: ignore[arg-type]

    assert_failed_with(info.value, CometlyDownloadExpiredError, "HTTP 403", "expired", "pass the export")
    assert [(f, s) for f, s, _ in _ranges(sim)][-2:] == [("cut", 200), (None, 403)]  # a real expiry
    assert_identical_or_absent(client, name, "e.ndjson.gz", direct, landed=False)
    assert_no_orphaned_uploads(client, name)


def test_url_expiring_while_the_resume_is_in_flight_is_renewed_from_the_export_id(
    sim: Any, bucket: tuple[Any, str]
) -> None:
    client, name = bucket
    status = completed_export(sim, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = direct_download(sim, status["export_id"])
    sim.update_config(url_ttl_seconds=2)
    # Cut; the resume (with a freshly signed URL, living 2-3 s) then sits 3.2 s in the server before
    # the signature check, so that URL has expired by then too; the next fresh URL gets through.
    sim.inject("download", "cut", at_byte=7_000_000)
    sim.inject("download", "delay", seconds=3.2, after=1, times=1)
    polls_before = len(sim.requests_for("export_status"))

    result = downloader(
        download_url=status, destination=f"s3://{name}/e.ndjson.gz", part_size=5 * MiB
    ).execute(download_context())  # type: ignore[arg-type]

    assert [(f, s) for f, s, _ in _ranges(sim)][-3:] == [("cut", 200), ("delay", 403), (None, 206)]
    # The download asks the export for its own URL: at the start, after the cut, after the 403.
    assert len(sim.requests_for("export_status")) - polls_before == 3
    assert result["resumes"] == 2
    assert result["sha256"] == direct.sha256
    assert_identical_or_absent(client, name, "e.ndjson.gz", direct, landed=True)
    assert_no_orphaned_uploads(client, name)


# --- the destination refuses a part ---------------------------------------------------------------


def _flaky_conn(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> str:
    """An AWS connection through the proxy; botocore's standard retry mode (3 retries), fast."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_FLAKY",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {
                    "endpoint_url": endpoint,
                    "region_name": "us-east-1",
                    "config_kwargs": {"retries": {"mode": "standard", "max_attempts": 3}},
                },
            }
        ),
    )
    return "aws_flaky"


def test_s3_500_on_one_part_upload_is_retried_and_lands_identical(
    sim: Any, bucket: tuple[Any, str], moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, name = bucket
    status = completed_export(sim, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = direct_download(sim, status["export_id"])
    with flaky_s3_proxy(moto_server, fail_part=2, fail_times=1) as proxy:
        result = downloader(
            download_url=status,
            destination=f"s3://{name}/e.ndjson.gz",
            destination_conn_id=_flaky_conn(monkeypatch, proxy.url),
            part_size=5 * MiB,
        ).execute(download_context())  # type: ignore[arg-type]
        assert proxy.part_puts(2) == [500, 200]
    assert result["sha256"] == direct.sha256
    assert_identical_or_absent(client, name, "e.ndjson.gz", direct, landed=True)
    assert_no_orphaned_uploads(client, name)


def test_s3_500_on_every_try_of_a_part_fails_the_task_and_aborts_the_upload(
    sim: Any,
    bucket: tuple[Any, str],
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    client, name = bucket
    status = completed_export(sim, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = direct_download(sim, status["export_id"])
    with flaky_s3_proxy(moto_server, fail_part=2, fail_times=None) as proxy:
        op = downloader(
            download_url=status,
            destination=f"s3://{name}/e.ndjson.gz",
            destination_conn_id=_flaky_conn(monkeypatch, proxy.url),
            part_size=5 * MiB,
        )
        with pytest.raises(ClientError) as info:
            op.execute(download_context())  # type: ignore[arg-type]
        assert proxy.part_puts(2) == [500] * 4  # the first try and botocore's 3 retries, all refused
    assert_failed_with(info.value, ClientError, "InternalError", "UploadPart", "reached max retries: 3")
    assert "Aborted the S3 multipart upload" in capfd.readouterr().out
    assert_identical_or_absent(client, name, "e.ndjson.gz", direct, landed=False)
    assert_no_orphaned_uploads(client, name)
