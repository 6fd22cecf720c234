"""Object locations (``s3://``, ``gs://``, ``file://``) as tasks read and write them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cometly_provider.exceptions import CometlyInputError

SCHEMES = ("s3", "gs", "file")
ALLOWED = ", ".join(f"{scheme}://" for scheme in SCHEMES)


@dataclass(frozen=True)
class ObjectLocation:
    """A parsed location. For ``file``, ``bucket`` is empty and ``key`` is the absolute path."""

    scheme: str
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        if self.scheme == "file":
            return f"file://{self.key}"
        return f"{self.scheme}://{self.bucket}/{self.key}"


def parse_location(value: object, *, field: str, bare_paths: bool = False) -> ObjectLocation:
    """Validate and split ``s3://bucket/key``, ``gs://bucket/key`` or ``file:///path`` (one object).

    ``bare_paths`` also accepts ``/absolute/path`` as a local file. Errors name the field, the value
    and what is allowed.
    """
    invalid = f"{field}={value!r} is invalid"
    schemes = ALLOWED + (" (or an absolute /path)" if bare_paths else "")
    if not isinstance(value, str) or not value.strip():
        raise CometlyInputError(f"{invalid}: expected a URI starting with one of {schemes}", field=field)
    text = value.strip()
    if bare_paths and text.startswith("/"):
        text = "file://" + text
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or "://" not in text:
        reason = "not a URI of the form scheme://..."
    elif parts.scheme.lower() not in SCHEMES:
        reason = f"unsupported scheme {parts.scheme.lower()}://" if parts.scheme else "no scheme"
    else:
        reason = ""
    if parts is None or reason:
        raise CometlyInputError(f"{invalid}: {reason}; the scheme must be one of {schemes}", field=field)
    if parts.query or parts.fragment:
        raise CometlyInputError(f"{invalid}: a location takes no query string or fragment", field=field)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise CometlyInputError(
                f"{invalid}: file:// locations must be local absolute paths (file:///path/to/file), "
                f"not on host {parts.netloc!r}",
                field=field,
            )
        path = unquote(parts.path)
        if not path.startswith("/") or path.endswith("/"):
            raise CometlyInputError(
                f"{invalid}: expected an absolute file path like file:///data/cometly/events.ndjson.gz "
                "(not a directory)",
                field=field,
            )
        return ObjectLocation("file", "", os.path.normpath(path))
    bucket, key = parts.netloc, parts.path.lstrip("/")
    expected = f"expected {scheme}://bucket/path/to/object"
    if not bucket:
        raise CometlyInputError(f"{invalid}: no bucket; {expected}", field=field)
    if not key:
        raise CometlyInputError(
            f"{invalid}: expected an object key after the bucket; {expected}", field=field
        )
    if key.endswith("/"):
        raise CometlyInputError(
            f"{invalid}: expected an object key after the bucket ({scheme}://{bucket}/path/to/object), "
            "not a prefix",
            field=field,
        )
    return ObjectLocation(scheme, bucket, key)
