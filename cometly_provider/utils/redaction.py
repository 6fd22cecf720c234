"""Keep the API key and presigned-URL signatures out of logs, XCom previews and exception text."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from airflow.providers.common.compat.sdk import mask_secret

REDACTED_QUERY = "<redacted>"
_EXPORT_ID_FRAGMENT = "cometly_export_id="
_EXPORT_KIND_FRAGMENT = "cometly_export_kind="


def redact_url(url: str) -> str:
    """``url`` without its query string (which carries the presigned signature), safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.query:
        return urlunsplit(parts._replace(fragment=""))
    return urlunsplit(parts._replace(query=REDACTED_QUERY, fragment=""))


def storable_download_url(url: str, export_id: object, kind: str = "events") -> str:
    """What XCom keeps of a presigned URL: no signature, but the export to fetch a fresh URL from.

    XCom values are stored in the metadata DB and shown unmasked in the UI and REST API, so the
    signed URL never goes there. The fragment names the export (kind and id) so that this string
    alone (``xcom_pull(...)['download_url']``) still lets the download ask for a freshly signed URL.
    """
    return f"{redact_url(url)}#{_EXPORT_ID_FRAGMENT}{export_id}&{_EXPORT_KIND_FRAGMENT}{kind}"


def is_redacted_url(url: str) -> bool:
    """True for a URL whose signature was removed by :func:`redact_url`."""
    try:
        return urlsplit(url).query == REDACTED_QUERY
    except ValueError:
        return False


def export_of_redacted_url(url: str) -> tuple[str | None, str]:
    """(export id as text or None, kind name) that a :func:`storable_download_url` carries.

    URLs stored by 0.1.0 carry only the id; they were all event exports.
    """
    try:
        fragment = urlsplit(url).fragment
    except ValueError:
        return None, "events"
    values = dict(pair.partition("=")[::2] for pair in fragment.split("&") if "=" in pair)
    return values.get(_EXPORT_ID_FRAGMENT[:-1]), values.get(_EXPORT_KIND_FRAGMENT[:-1], "events")


def mask_presigned_url(url: str) -> None:
    """Register the URL's query string with Airflow's secret masker (logs and rendered fields)."""
    query = urlsplit(url).query
    if query:
        mask_secret(query)
        # Signatures also show up on their own, e.g. in a botocore or urllib3 debug line.
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            sensitive = any(word in name.lower() for word in ("signature", "credential", "token"))
            if sensitive and len(value) >= 8:
                mask_secret(value)
