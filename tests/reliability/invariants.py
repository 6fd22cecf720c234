"""Invariants every fault test of the reliability suite checks once the dust has settled.

Written once, used after each fault:

* every accepted event is stored exactly once in the simulator (:func:`assert_stored_exactly_once`);
* every landed object is byte-identical to the export, compared by sha256 with a direct download
  from the simulator, or absent (:func:`assert_identical_or_absent`);
* no multipart upload is left behind in the bucket (:func:`assert_no_orphaned_uploads`), and no
  temp file next to a local destination (:func:`assert_local_identical_or_absent`);
* the task's final state and message say what happened (:func:`assert_failed_with`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests


def content(event: Mapping[str, Any]) -> str:
    """An event's identity for these checks: its payload without the idempotency key."""
    return json.dumps({k: v for k, v in event.items() if k != "idempotency_key"}, sort_keys=True)


def assert_stored_exactly_once(sim: Any, accepted: Iterable[Mapping[str, Any]]) -> None:
    """Each accepted event is stored exactly once, nothing else is stored, no key is stored twice."""
    stored = sim.events
    keys = Counter(e.get("idempotency_key") for e in stored)
    twice = {k: n for k, n in keys.items() if n > 1}
    assert not twice, f"idempotency keys stored more than once: {twice}"
    expected = Counter(content(e) for e in accepted)
    got = Counter(content(e) for e in stored)
    missing = expected - got
    extra = got - expected
    assert not missing, f"{missing.total()} accepted events never stored, e.g. {next(iter(missing))}"
    assert not extra, f"{extra.total()} events stored twice or never sent, e.g. {next(iter(extra))}"


@dataclass(frozen=True)
class Direct:
    """The export as a plain GET of a fresh presigned URL returns it (no provider code involved)."""

    sha256: str
    size: int
    body: bytes


def direct_download(sim: Any, export_id: int) -> Direct:
    url, _ = sim.presign(export_id)
    response = requests.get(url, timeout=60, headers={"Accept-Encoding": "identity"})
    response.raise_for_status()
    body = response.content
    return Direct(hashlib.sha256(body).hexdigest(), len(body), body)


def s3_body(client: Any, bucket: str, key: str) -> bytes | None:
    from botocore.exceptions import ClientError

    try:
        return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def assert_identical_or_absent(
    client: Any, bucket: str, key: str, direct: Direct, *, landed: bool | None = None
) -> None:
    """The S3 object is the export byte for byte, or does not exist; ``landed`` says which is expected."""
    body = s3_body(client, bucket, key)
    if landed is True:
        assert body is not None, f"s3://{bucket}/{key} did not land"
    if landed is False:
        assert body is None, f"s3://{bucket}/{key} exists ({len(body or b'')} bytes) but should not"
    if body is not None:
        assert len(body) == direct.size, f"landed {len(body)} bytes, the export has {direct.size}"
        assert hashlib.sha256(body).hexdigest() == direct.sha256, "landed object differs from the export"
    others = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []) if o["Key"] != key]
    assert others == [], f"unexpected objects in the bucket: {others}"


def assert_no_orphaned_uploads(client: Any, bucket: str) -> None:
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], f"orphaned multipart uploads: {[(u['Key'], u['UploadId']) for u in uploads]}"


def assert_local_identical_or_absent(path: Path, direct: Direct, *, landed: bool | None = None) -> None:
    """Same for a local file; also no temp (``.part``) file left in its directory."""
    if landed is True:
        assert path.exists(), f"{path} did not land"
    if landed is False:
        assert not path.exists(), f"{path} exists but should not"
    if path.exists():
        body = path.read_bytes()
        assert hashlib.sha256(body).hexdigest() == direct.sha256, "landed file differs from the export"
    leftovers = [p.name for p in path.parent.iterdir() if p != path] if path.parent.exists() else []
    assert leftovers == [], f"files left next to the destination: {leftovers}"


def assert_failed_with(error: BaseException, kind: type[BaseException], *fragments: str) -> None:
    """The failure has the expected type and its message names what happened."""
    assert isinstance(error, kind), f"expected {kind.__name__}, got {type(error).__name__}: {error}"
    message = str(error)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error message: {message}"
