"""Where a batch of events comes from: a list, one event, or an NDJSON file streamed line by line."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.utils.ndjson_source import NdjsonSource, looks_like_location, parse_source
from cometly_provider.utils.rendered import parse_rendered_literal
from cometly_provider.validation import BOOLEAN_TRACK_FIELDS

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class EventSource(Protocol):
    label: str  # "index" (0-based, lists) or "line" (1-based, files)
    description: str

    def rows(self) -> Iterator[tuple[int, Any]]: ...


class ListSource:
    label = "index"

    def __init__(self, items: Sequence[Any], description: str) -> None:
        self.items = items
        self.description = description

    def rows(self) -> Iterator[tuple[int, Any]]:
        return enumerate(self.items)


class FileSource:
    label = "line"

    def __init__(self, source: NdjsonSource) -> None:
        self.source = source
        self.description = f"NDJSON file {source.uri}"

    def rows(self) -> Iterator[tuple[int, Any]]:
        return self.source.rows()


def event_source(
    *,
    event: Any,
    events: Any,
    event_fields: Mapping[str, Any],
    storage_conn_id: str | None,
) -> tuple[EventSource, bool]:
    """The rendered operator input as a source of rows; ``True`` for a single event."""
    given = [name for name, value in (("event", event), ("events", events)) if value is not None]
    if event_fields:
        given.append("event field keyword arguments")
    if len(given) != 1:
        raise CometlyInputError(
            "TrackEventOperator needs exactly one of event=, events= or event field keyword "
            f"arguments (event_name=, email=, ...); got {', '.join(given) if given else 'none'}",
            field="events" if "events" in given else "event",
        )
    if event_fields:
        return ListSource([coerce_field_kwargs(event_fields)], "1 event"), True
    if event is not None:
        parsed = parse_literal(event, "event")
        if not isinstance(parsed, Mapping):
            raise CometlyInputError(
                f"event={short(event)} is invalid: expected one event as a dict (or a JSON "
                "object string); for several events use events=",
                field="event",
            )
        return ListSource([parsed], "1 event"), True
    if isinstance(events, str):
        text = events.strip()
        if text.startswith(("[", "{")):
            events = parse_literal(text, "events")
        elif looks_like_location(text):
            return FileSource(NdjsonSource(parse_source(text), conn_id=storage_conn_id)), False
        else:
            raise CometlyInputError(
                f"events={short(events)} is invalid: expected a list of event dicts, a JSON array, or "
                "an NDJSON location (s3://bucket/key, gs://bucket/key, file:///path or /path)",
                field="events",
            )
    if isinstance(events, Mapping) or not isinstance(events, Sequence) or isinstance(events, bytes | str):
        raise CometlyInputError(
            f"events={short(events)} is invalid: expected a list of event dicts (for one event "
            "use event=), a JSON array, or an NDJSON location (s3://, gs://, file:// or /path)",
            field="events",
        )
    return ListSource(events, f"{len(events):,} events from a list"), False


def coerce_field_kwargs(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Templated keyword arguments render to strings: turn numbers and booleans back."""
    out = dict(fields)
    amount = out.get("amount")
    if isinstance(amount, str) and _NUMBER.match(amount.strip()):
        text = amount.strip()
        out["amount"] = int(text) if text.lstrip("+-").isdigit() else float(text)
    for name in BOOLEAN_TRACK_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            out[name] = value.strip().lower() == "true"
    return out


def parse_literal(value: Any, name: str) -> Any:
    """A rendered JSON (or Python-literal, from a plain ``{{ xcom }}`` template) string, parsed."""
    if not isinstance(value, str):
        return value
    try:
        return parse_rendered_literal(value.strip())
    except ValueError:
        raise CometlyInputError(
            f"{name}={short(value)} is not valid JSON (nor a Python literal)", field=name
        ) from None


def short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
