"""Keep the API key and presigned-URL signatures out of logs, XCom previews and exception text."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from airflow.providers.common.compat.sdk import mask_secret


def redact_url(url: str) -> str:
    """``url`` without its query string (which carries the presigned signature), safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.query:
        return urlunsplit(parts._replace(fragment=""))
    return urlunsplit(parts._replace(query="<redacted>", fragment=""))


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
