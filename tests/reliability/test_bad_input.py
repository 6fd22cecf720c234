"""Bad input never reaches Cometly: every rule of the API reference, checked through the operators.

Each case runs an operator's ``execute`` (and a few a whole ``dag.test()``) against the simulator
and proves three things:

* no request was sent: the simulator's request log stays empty (so bad input costs no rate-limit
  budget and stores nothing);
* the error is a :class:`~cometly_provider.exceptions.CometlyInputError` (fails the task without
  retries) whose message names the field, the bad value and what is allowed;
* nothing is lost silently: with ``on_invalid="fail"`` a batch with one bad row sends nothing at
  all, and with ``"skip"`` every row is either stored once or reported.

The tables cover every parameter rule of ``create-event-export.md``, every validation rule of
``create-event.md``, malformed sensor results handed to the download operator, and destinations
with schemes the provider cannot write to.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.operators.event_export import CreateEventExportOperator
from cometly_provider.operators.track_event import TrackEventOperator
from cometly_provider.validation import SOURCES
from tests import event_exports as support
from tests.reliability.invariants import assert_stored_exactly_once
from tests.reliability.pipeline import download_context, downloader, purchases, track_context

SIGNATURE = "BADINPUTSIG0123456789abcdef"
SIGNED = f"https://bucket.s3.amazonaws.com/exports/e.ndjson.gz?X-Amz-Signature={SIGNATURE}"
MODELS = "first_touch, last_touch, linear"
WINDOWS = "0, 1, 7, 14, 30, 60, 90"
EVENT_NAMES_HELP = "custom_event_1 .. custom_event_50"
SCHEMES = "s3://, gs://, file://"
ATTRIBUTION = {"attribution_model": "last_touch", "attribution_window": 7}


def _rejected(sim: Any, run: Any, field: str | None, *fragments: str) -> str:
    """``run()`` fails with a CometlyInputError naming ``field`` and every fragment; nothing was sent."""
    with pytest.raises(CometlyInputError) as info:
        run()
    message = str(info.value)
    if field is not None:
        assert info.value.field == field, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert sim.requests == [], [(r.method, r.path) for r in sim.requests]
    return message


# --- Create Event Export: every parameter rule of create-event-export.md ---------------------------

TODAY = object()  # placeholder for "today in UTC" (the simulator's Space is on UTC)

# (operator kwargs, field named by the error, fragments: the bad value as written, what is allowed)
EXPORT_CASES: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    # date: required, YYYY-MM-DD, a real day, one day per export.
    ("date slashes", {"date": "2024/01/15"}, "date", ("date='2024/01/15'", "YYYY-MM-DD")),
    ("date not padded", {"date": "2024-1-5"}, "date", ("date='2024-1-5'", "YYYY-MM-DD")),
    ("date not a day", {"date": "2024-02-30"}, "date", ("date='2024-02-30'", "YYYY-MM-DD")),
    ("date day first", {"date": "15-01-2024"}, "date", ("date='15-01-2024'", "YYYY-MM-DD")),
    (
        "2-day range as text",
        {"date": "2024-01-15/2024-01-16"},
        "date",
        ("date='2024-01-15/2024-01-16'", "exactly one day"),
    ),
    (
        "2-day range as list",
        {"date": ["2024-01-15", "2024-01-16"]},
        "date",
        ("date=['2024-01-15', '2024-01-16']", "exactly one day"),
    ),
    ("date a number", {"date": 20240115}, "date", ("date=20240115", "YYYY-MM-DD")),
    # date=None is the default (the last complete day); a template that rendered empty is not.
    ("date rendered empty", {"date": " "}, "date", ("date=' '", "YYYY-MM-DD")),
    (
        "date today (incomplete)",
        {"date": TODAY},
        "date",
        ("not over yet", "complete past day"),
    ),
    # query_mode: profile | company.
    ("query_mode", {"query_mode": "person"}, "query_mode", ("query_mode='person'", "profile, company")),
    # event_names: 1..10 documented names, no duplicates.
    (
        "unknown event name",
        {"event_names": ["purchase", "buy_stuff"]},
        "event_names",
        ("'buy_stuff'", "upsell_purchase", EVENT_NAMES_HELP),
    ),
    (
        "custom_event_51",
        {"event_names": ["custom_event_51"]},
        "event_names",
        ("'custom_event_51'", EVENT_NAMES_HELP),
    ),
    (
        "custom_event_0",
        {"event_names": ["custom_event_0"]},
        "event_names",
        ("'custom_event_0'", EVENT_NAMES_HELP),
    ),
    (
        "11 event names",
        {"event_names": [f"custom_event_{i}" for i in range(1, 12)]},
        "event_names",
        ("event_names has 11 values", "between 1 and 10"),
    ),
    ("no event names", {"event_names": []}, "event_names", ("event_names has 0 values", "between 1 and 10")),
    (
        "duplicate event names",
        {"event_names": ["purchase", "sign_up", "purchase"]},
        "event_names",
        ("'purchase' is repeated", "duplicates are not allowed"),
    ),
    (
        "event names not a list",
        {"event_names": "purchase"},
        "event_names",
        ("event_names='purchase'", "a list of strings"),
    ),
    # sources: 1..15 documented names, no duplicates, and then attribution_model + _window.
    (
        "unknown source",
        {"sources": ["myspace_ads"], **ATTRIBUTION},
        "sources",
        ("'myspace_ads'", "facebook_ads"),
    ),
    (
        "duplicate sources",
        {"sources": ["facebook_ads", "google_ads", "facebook_ads"], **ATTRIBUTION},
        "sources",
        ("'facebook_ads' is repeated", "duplicates are not allowed"),
    ),
    (
        "16 sources",
        {"sources": sorted(SOURCES)[:16], **ATTRIBUTION},
        "sources",
        ("sources has 16 values", "between 1 and 15"),
    ),
    ("no sources", {"sources": [], **ATTRIBUTION}, "sources", ("sources has 0 values", "between 1 and 15")),
    (
        "sources without attribution_model",
        {"sources": ["facebook_ads"], "attribution_window": 7},
        "attribution_model",
        ("attribution_model is required when sources is given", MODELS),
    ),
    (
        "sources without attribution_window",
        {"sources": ["facebook_ads"], "attribution_model": "linear"},
        "attribution_window",
        ("attribution_window is required when sources is given", WINDOWS),
    ),
    # attribution_model / attribution_window: the documented options only.
    (
        "attribution_model unknown",
        {"sources": ["facebook_ads"], "attribution_model": "best_touch", "attribution_window": 7},
        "attribution_model",
        ("attribution_model='best_touch'", MODELS),
    ),
    (
        "attribution_window 3",
        {"sources": ["facebook_ads"], "attribution_model": "linear", "attribution_window": 3},
        "attribution_window",
        ("attribution_window=3", WINDOWS),
    ),
    (
        "attribution_window '7 days'",
        {"sources": ["facebook_ads"], "attribution_model": "linear", "attribution_window": "7 days"},
        "attribution_window",
        ("attribution_window='7 days'", WINDOWS),
    ),
    (
        "attribution_window 7.5",
        {"sources": ["facebook_ads"], "attribution_model": "linear", "attribution_window": 7.5},
        "attribution_window",
        ("attribution_window=7.5", WINDOWS),
    ),
    # fields: 1..20 requestable names, no duplicates, ad hierarchy only with sources.
    (
        "unknown field",
        {"fields": ["amount", "revenue"]},
        "fields",
        ("'revenue'", "event_name, configured_name"),
    ),
    (
        "touchpoint_id is not requestable",
        {"fields": ["touchpoint_id"]},
        "fields",
        ("'touchpoint_id'", "event_name, configured_name"),
    ),
    (
        "source is not requestable",
        {"fields": ["source"]},
        "fields",
        ("'source'", "event_name, configured_name"),
    ),
    (
        "21 fields",
        {"fields": ["event_name"] * 21},
        "fields",
        ("fields has 21 values", "between 1 and 20"),
    ),
    ("no fields", {"fields": []}, "fields", ("fields has 0 values", "between 1 and 20")),
    (
        "duplicate fields",
        {"fields": ["amount", "order_id", "amount"]},
        "fields",
        ("'amount' is repeated", "duplicates are not allowed"),
    ),
    (
        "ad hierarchy field without sources",
        {"fields": ["amount", "campaign_name"]},
        "fields",
        ("campaign_name requires sources", "ad_id, ad_name"),
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "field", "fragments"),
    [case[1:] for case in EXPORT_CASES],
    ids=[case[0] for case in EXPORT_CASES],
)
def test_export_parameter_rejected_before_any_request(
    sim: Any, kwargs: dict[str, Any], field: str, fragments: tuple[str, ...]
) -> None:
    kwargs = {"date": "2024-01-15", **kwargs}
    if kwargs["date"] is TODAY:
        # Resolved when the test runs, not at collection: a suite that crosses midnight
        # would otherwise send yesterday, which is complete and rightly accepted.
        kwargs["date"] = dt.datetime.now(dt.UTC).date().isoformat()
    op = CreateEventExportOperator(task_id="create_export", wait_for_completion=True, **kwargs)
    _rejected(sim, lambda: op.execute(support.context()), field, *fragments)


def test_export_date_range_through_the_hook_is_rejected(sim: Any) -> None:
    """Two days through the hook's extra parameters: an end date is named as not allowed."""
    from cometly_provider.hooks.cometly import CometlyHook

    def create() -> Any:
        return CometlyHook().create_event_export(date="2024-01-15", end_date="2024-01-16")

    _rejected(sim, create, "end_date", "end_date", "allowed: date, query_mode", "exactly one `date`")


# --- Track: every validation rule of create-event.md -----------------------------------------------

EMAIL = {"email": "a@example.com"}
# (operator kwargs, fragments: the field and bad value as written, what is allowed)
TRACK_CASES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    # amount must be a number.
    (
        "amount '12,50' (keyword)",
        {"event_name": "purchase", **EMAIL, "amount": "12,50"},
        ("amount='12,50'", "must be a number, e.g. 12.5"),
    ),
    (
        "amount '12.50' in an event dict",
        {"event": {"event_name": "purchase", **EMAIL, "amount": "12.50"}},
        ("amount='12.50'", "must be a number"),
    ),
    (
        "amount a boolean",
        {"event": {"event_name": "purchase", **EMAIL, "amount": True}},
        ("amount=True", "must be a number"),
    ),
    # event_name: required, a standard event or custom_event_1..50.
    (
        "unknown event name",
        {"event_name": "purchased", **EMAIL},
        ("event_name='purchased'", "purchase, subscribe", EVENT_NAMES_HELP),
    ),
    (
        "custom_event_0",
        {"event_name": "custom_event_0", **EMAIL},
        ("event_name='custom_event_0'", EVENT_NAMES_HELP),
    ),
    (
        "custom_event_51",
        {"event_name": "custom_event_51", **EMAIL},
        ("event_name='custom_event_51'", EVENT_NAMES_HELP),
    ),
    (
        "export-only event name",
        {"event_name": "upsell_purchase", **EMAIL},
        ("event_name='upsell_purchase'", EVENT_NAMES_HELP),
    ),
    ("event name missing", {"event": {**EMAIL, "amount": 5}}, ("event_name is required", EVENT_NAMES_HELP)),
    ("event name blank", {"event_name": "  ", **EMAIL}, ("event_name is required", EVENT_NAMES_HELP)),
    # Identification: email, comet_token, or fingerprint + ip together.
    (
        "no identification",
        {"event_name": "purchase", "amount": 5},
        ("identification method is required", "email, comet_token, or fingerprint and ip together"),
    ),
    (
        "blank identification",
        {"event": {"event_name": "purchase", "email": " ", "comet_token": ""}},
        ("identification method is required", "email, comet_token, or fingerprint and ip together"),
    ),
    (
        "fingerprint without ip",
        {"event_name": "purchase", "fingerprint": "fp-1"},
        ("ip is required when fingerprint is given", "send both or neither"),
    ),
    (
        "ip without fingerprint",
        {"event_name": "purchase", "ip": "203.0.113.7", **EMAIL},
        ("fingerprint is required when ip is given", "send both or neither"),
    ),
    # event_time: ISO 8601 or unix seconds.
    (
        "event_time not a time",
        {"event_name": "purchase", **EMAIL, "event_time": "yesterday"},
        ("event_time='yesterday'", "ISO 8601", "unix seconds"),
    ),
    (
        "event_time with slashes",
        {"event_name": "purchase", **EMAIL, "event_time": "2024/01/15 10:30"},
        ("event_time='2024/01/15 10:30'", "ISO 8601"),
    ),
    (
        "event_time in milliseconds",
        {"event": {"event_name": "purchase", **EMAIL, "event_time": 1705314600000}},
        ("event_time=1705314600000", "not milliseconds"),
    ),
    # Types of the documented fields.
    (
        "order_id a number",
        {"event": {"event_name": "purchase", **EMAIL, "order_id": 12345}},
        ("order_id=12345", "must be a string"),
    ),
    (
        "is_upsell 'yes'",
        {"event_name": "purchase", **EMAIL, "is_upsell": "yes"},
        ("is_upsell='yes'", "must be a boolean (true or false)"),
    ),
    (
        "do_not_capi 1",
        {"event": {"event_name": "purchase", **EMAIL, "do_not_capi": 1}},
        ("do_not_capi=1", "must be a boolean"),
    ),
    # Profile fields: 1-15 text, 16-25 numbers, 26-30 dates, nothing beyond 30.
    (
        "profile_field_3 a number",
        {"event": {"event_name": "purchase", **EMAIL, "profile_field_3": 5}},
        ("profile_field_3=5", "must be text (profile_field_1..15)"),
    ),
    (
        "profile_field_16 not a number",
        {"event_name": "purchase", **EMAIL, "profile_field_16": "lots"},
        ("profile_field_16='lots'", "must be a number (profile_field_16..25)"),
    ),
    (
        "profile_field_26 not a date",
        {"event_name": "purchase", **EMAIL, "profile_field_26": "soon"},
        ("profile_field_26='soon'", "ISO 8601 date (profile_field_26..30)"),
    ),
    (
        "profile_field_31",
        {"event": {"event_name": "purchase", **EMAIL, "profile_field_31": "x"}},
        ("profile_field_31 is not a documented field", "profile_field_1..30"),
    ),
    (
        "misspelt field",
        {"event": {"event_name": "purchase", "emial": "a@example.com", **EMAIL}},
        ("emial is not a documented field", "profile_field_1..30"),
    ),
    # Not an event at all.
    (
        "event not an object",
        {"events": [["purchase", "a@example.com"]]},
        ("index 0", "must be a JSON object (dict)"),
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "fragments"), [case[1:] for case in TRACK_CASES], ids=[c[0] for c in TRACK_CASES]
)
def test_track_event_rejected_before_any_request(
    sim: Any, kwargs: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    op = TrackEventOperator(task_id="track", **kwargs)
    message = _rejected(sim, lambda: op.execute(track_context()), None, *fragments, "nothing was sent")
    assert "on_invalid='skip'" in message  # ...and how to send the valid ones anyway


def test_one_bad_row_at_the_end_of_a_batch_sends_nothing(sim: Any) -> None:
    events: list[Any] = purchases(299)
    events.append({"event_name": "purchase", **EMAIL, "amount": "12,50"})
    op = TrackEventOperator(task_id="track", events=events, max_workers=4)
    _rejected(
        sim,
        lambda: op.execute(track_context()),
        "events",
        "1 of 300 events is invalid",
        "index 299: amount='12,50'",
    )
    assert sim.events == []


def test_one_bad_line_at_the_end_of_an_ndjson_file_sends_nothing(sim: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson.gz"
    lines = [json.dumps(e) for e in purchases(199)] + [
        '{"event_name": "purchase", "email": "a@example.com", '
    ]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    op = TrackEventOperator(task_id="track", events=str(path))
    _rejected(sim, lambda: op.execute(track_context()), "events", "1 of 200 events is invalid", "line 200")


def test_skipping_bad_rows_loses_nothing_silently(sim: Any) -> None:
    """With on_invalid='skip' every row is accounted for: stored exactly once, or reported by index."""
    good = purchases(120)
    events: list[Any] = list(good)
    bad = {7: {**good[7], "event_name": "purchased"}, 50: "not an event", 119: {**good[119], "email": ""}}
    for index, row in bad.items():
        events[index] = row
    result = TrackEventOperator(task_id="track", events=events, on_invalid="skip", max_workers=4).execute(
        track_context()  # type: ignore[arg-type]
    )
    assert (result["total"], result["sent"], result["skipped_invalid"], result["failed"]) == (120, 117, 3, 0)
    assert [entry["index"] for entry in result["invalid"]] == sorted(bad)
    assert_stored_exactly_once(sim, [e for i, e in enumerate(good) if i not in bad])


# --- Download: malformed sensor results, and destinations the provider cannot write to ---------------

DOWNLOAD_CASES: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    (
        "result dict without export_id",
        {"download_url": {"status": "completed", "expires_at": "2024-01-15T10:48:42Z"}},
        "download_url",
        ("keys ['expires_at', 'status']", "the sensor's result"),
    ),
    (
        "result dict rendered as text, without export_id",
        {"download_url": "{'status': 'completed'}"},
        "download_url",
        ("keys ['status']", "the sensor's result"),
    ),
    (
        "result dict with a file:// download_url and no export",
        {"download_url": {"export_id": None, "download_url": "file:///etc/passwd"}},
        "download_url",
        ("keys ['download_url', 'export_id']", "the sensor's result"),
    ),
    (
        "file:// URL",
        {"download_url": "file:///etc/passwd"},
        "download_url",
        ("download_url='file:///etc/passwd'", "scheme 'file'", "http(s) presigned URL"),
    ),
    (
        "plain words",
        {"download_url": "completed"},
        "download_url",
        ("download_url='completed'", "no scheme", "http(s) presigned URL"),
    ),
    (
        "the string None",
        {"download_url": "None"},
        "download_url",
        ("download_url='None'", "no scheme", "http(s) presigned URL"),
    ),
    (
        "an s3:// URI",
        {"download_url": "s3://bucket/exports/e.ndjson.gz"},
        "download_url",
        ("download_url='s3://bucket/exports/e.ndjson.gz'", "scheme 's3'", "http(s) presigned URL"),
    ),
    (
        "https without a host",
        {"download_url": "https:///exports/e.ndjson.gz"},
        "download_url",
        ("download_url='https:///exports/e.ndjson.gz'", "http(s) presigned URL"),
    ),
    ("blank", {"download_url": "   "}, "download_url", ("download_url is empty", "http(s) presigned URL")),
    (
        "a list",
        {"download_url": [SIGNED]},
        "download_url",
        ("got list", "http(s) presigned URL", "the sensor's result dict"),
    ),
    (
        "redacted URL naming no export",
        {"download_url": "https://bucket.s3.amazonaws.com/exports/e.ndjson.gz?<redacted>"},
        "download_url",
        ("signature redacted and names no export", "pass the sensor's whole result"),
    ),
    (
        "result dict whose download_url is None",
        {"download_url": {"download_url": None, "status": "completed"}},
        "download_url",
        ("keys ['download_url', 'status']", "the sensor's result"),
    ),
    (
        "export id that is not a number",
        {"download_url": {"download_url": SIGNED, "export_id": "seven"}},
        "download_url",
        ("'seven'", "integer export_id"),
    ),
    # Destinations: s3://, gs:// and file:// only.
    ("ftp:// destination", {"destination": "ftp://lake/e.ndjson.gz"}, "destination", ("ftp://", SCHEMES)),
    (
        "hdfs:// destination",
        {"destination": "hdfs://namenode/lake/e.ndjson.gz"},
        "destination",
        ("hdfs://", SCHEMES),
    ),
    (
        "http:// destination",
        {"destination": "http://lake.example.com/e.gz"},
        "destination",
        ("http://", SCHEMES),
    ),
    (
        "bare absolute path",
        {"destination": "/tmp/e.ndjson.gz"},
        "destination",
        ("'/tmp/e.ndjson.gz'", SCHEMES),
    ),
    (
        "relative path",
        {"destination": "exports/e.ndjson.gz"},
        "destination",
        ("'exports/e.ndjson.gz'", SCHEMES),
    ),
    (
        "s3 with one slash",
        {"destination": "s3:/lake/e.ndjson.gz"},
        "destination",
        ("'s3:/lake/e.ndjson.gz'", SCHEMES),
    ),
    (
        "s3 without a key",
        {"destination": "s3://lake"},
        "destination",
        ("'s3://lake'", "s3://bucket/path/to/object"),
    ),
    (
        "file:// on another host",
        {"destination": "file://nas/exports/e.gz"},
        "destination",
        ("'file://nas/exports/e.gz'", "file:///path/to/file"),
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "field", "fragments"), [c[1:] for c in DOWNLOAD_CASES], ids=[c[0] for c in DOWNLOAD_CASES]
)
def test_download_input_rejected_before_any_request(
    sim: Any, tmp_path: Path, kwargs: dict[str, Any], field: str, fragments: tuple[str, ...]
) -> None:
    kwargs = {"download_url": SIGNED, "destination": f"file://{tmp_path}/e.ndjson.gz", **kwargs}
    op = downloader(**kwargs)
    message = _rejected(sim, lambda: op.execute(download_context()), field, *fragments)  # type: ignore[arg-type]
    assert SIGNATURE not in message
    assert list(tmp_path.iterdir()) == []  # and nothing written


@pytest.mark.parametrize(
    ("kwargs", "field", "fragments"),
    [
        (
            {"events": purchases(3), "failed_events_path": "ftp://lake/failed.ndjson"},
            "failed_events_path",
            ("failed_events_path='ftp://lake/failed.ndjson'", "ftp://", SCHEMES),
        ),
        (
            {"events": purchases(3), "failed_events_path": "failed.ndjson"},
            "failed_events_path",
            ("failed_events_path='failed.ndjson'", SCHEMES),
        ),
        (
            {"events": "hdfs://namenode/events.ndjson"},
            "events",
            ("events='hdfs://namenode/events.ndjson'", "hdfs://", SCHEMES, "absolute /path"),
        ),
        (
            {"events": "ftp://lake/events.ndjson.gz"},
            "events",
            ("events='ftp://lake/events.ndjson.gz'", "ftp://", SCHEMES),
        ),
    ],
    ids=["failed_events_path ftp://", "failed_events_path relative", "events hdfs://", "events ftp://"],
)
def test_track_locations_with_unknown_schemes_rejected_before_any_request(
    sim: Any, kwargs: dict[str, Any], field: str, fragments: tuple[str, ...]
) -> None:
    op = TrackEventOperator(task_id="track", **kwargs)
    _rejected(sim, lambda: op.execute(track_context()), field, *fragments)


# --- The same through a real Airflow run ------------------------------------------------------------


@pytest.mark.usefixtures("airflow_db")
def test_dag_run_with_bad_input_fails_its_tasks_and_sends_nothing(
    sim: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """dag.test(): templated bad values fail their tasks at once (no retries), the log says why."""
    import pendulum
    from airflow.sdk import DAG

    dag_id = support.dag_id("bad_input")
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False) as dag:
        CreateEventExportOperator(
            task_id="create_export",
            date="{{ ds.replace('-', '/') }}",
            attribution_window="3",
            retries=3,
        )
        TrackEventOperator(
            task_id="track",
            event_name="purchase",
            email="{{ 'a@example.com' }}",
            amount="{{ '12,50' }}",
            retries=3,
        )
        downloader(
            download_url="{{ {'export_id': 7, 'status': 'completed'} }}",
            destination="ftp://lake/{{ ds }}/e.gz",
            retries=3,
        )

    run = support.run_dag(dag)

    assert run.state == "failed"
    states = support.task_states(dag_id, run.run_id)
    assert states == {
        ("create_export", -1): "failed",
        ("track", -1): "failed",
        ("download_export", -1): "failed",
    }
    assert sim.requests == []
    out, err = capfd.readouterr()
    logs = out + err
    assert "date='2024/01/15' is invalid: use one day as YYYY-MM-DD" in logs
    assert "amount='12,50' must be a number" in logs
    assert "destination='ftp://lake/2024-01-15/e.gz' is invalid" in logs
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tries = {ti.task_id: ti.try_number for ti in session.query(TaskInstance).filter_by(dag_id=dag_id)}
    assert tries == {"create_export": 1, "track": 1, "download_export": 1}  # no retry was spent
