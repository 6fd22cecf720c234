"""Keep the API key and presigned-URL signatures out of logs, XCom previews and exception text."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from airflow.providers.common.compat.sdk import mask_secret

REDACTED_QUERY = "<redacted>"
_EXPORT_ID_FRAGMENT = "cometly_export_id="


def redact_url(url: str) -> str:
    """``url`` without its query string (which carries the presigned signature), safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.query:
        return urlunsplit(parts._replace(fragment=""))
    return urlunsplit(parts._replace(query=REDACTED_QUERY, fragment=""))


def storable_download_url(url: str, export_id: object) -> str:
    """What XCom keeps of a presigned URL: no signature, but the export to fetch a fresh URL from.

    XCom values are stored in the metadata DB and shown unmasked in the UI and REST API, so the
    signed URL never goes there. The fragment lets the download operator work from this string
    alone (``xcom_pull(...)['download_url']``): it asks the API for a freshly signed URL.
    """
    return f"{redact_url(url)}#{_EXPORT_ID_FRAGMENT}{export_id}"


def is_redacted_url(url: str) -> bool:
    """True for a URL whose signature was removed by :func:`redact_url`."""
    try:
        return urlsplit(url).query == REDACTED_QUERY
    except ValueError:
        return False


def export_id_of_redacted_url(url: str) -> str | None:
    """The export id a :func:`storable_download_url` carries, as text (validated by the caller)."""
    try:
        fragment = urlsplit(url).fragment
    except ValueError:
        return None
    return fragment.removeprefix(_EXPORT_ID_FRAGMENT) if fragment.startswith(_EXPORT_ID_FRAGMENT) else None


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
