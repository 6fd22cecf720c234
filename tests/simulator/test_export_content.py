"""Export file content (create-event-export.md "fields", "Export File Format", "Notes")."""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest

from cometly_provider.testing import run_simulator
from tests.simulator.conftest import Api

if TYPE_CHECKING:
    from cometly_provider.testing import CometlySimulator

pytestmark = pytest.mark.cometly_simulator(
    rate_limiting_enabled=False, queued_seconds=0, processing_seconds=0
)

AD_FIELDS = [
    "ad_id",
    "ad_name",
    "adset_id",
    "adset_name",
    "campaign_id",
    "campaign_name",
    "account_id",
    "account_name",
]
TIME_RE = re.compile(r"2024-01-15T\d{2}:\d{2}:\d{2}Z")


def _cents(amount: Any) -> int:
    assert isinstance(amount, int | float)
    assert not isinstance(amount, bool)
    return round(amount * 100)


def _by_event(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["id"]].append(row)
    return grouped


def test_default_export_has_id_and_event_time_utc_within_the_day(api: Api) -> None:
    rows = api.rows({"date": "2024-01-15"})
    assert len(rows) == 300
    assert all(set(row) == {"id", "event_time_utc"} for row in rows)
    assert all(TIME_RE.fullmatch(row["event_time_utc"]) for row in rows)
    assert len({row["id"] for row in rows}) == 300
    assert all(isinstance(row["id"], int) for row in rows)
    times = [row["event_time_utc"] for row in rows]
    assert times == sorted(times)


def test_requested_fields_are_present_with_plausible_values(api: Api) -> None:
    fields = ["profile_id", "company_id", "space_id", "event_name", "configured_name", "amount", "is_upsell"]
    rows = api.rows({"date": "2024-01-15", "fields": [*fields, "order_id", "order_name", "event_url"]})
    for row in rows:
        assert set(row) == {"id", "event_time_utc", *fields, "order_id", "order_name", "event_url"}
        assert isinstance(row["profile_id"], int)
        assert isinstance(row["company_id"], int)
        assert isinstance(row["space_id"], int)
        assert isinstance(row["is_upsell"], bool)
        assert _cents(row["amount"]) >= 0
        assert row["event_url"].startswith("https://")
        assert row["order_id"] is None or isinstance(row["order_id"], str)
        if not row["event_name"].startswith("custom_event_"):
            assert row["configured_name"] == row["event_name"]
    assert len({row["space_id"] for row in rows}) == 1  # one API key = one Space
    assert any(_cents(row["amount"]) > 0 for row in rows)
    assert any(row["order_id"] for row in rows)


def test_reference_example_fields(api: Api) -> None:
    rows = api.rows(
        {
            "date": "2024-01-15",
            "query_mode": "profile",
            "event_names": ["purchase", "sign_up"],
            "fields": ["id", "event_name", "amount", "profile_id", "event_time_utc"],
        }
    )
    assert {row["event_name"] for row in rows} == {"purchase", "sign_up"}
    assert all(set(row) == {"id", "event_name", "amount", "profile_id", "event_time_utc"} for row in rows)


@pytest.mark.parametrize(
    "names", [["purchase"], ["upsell_purchase", "custom_event_7"], ["view_content", "schedule"]]
)
def test_event_names_filter_is_honoured(api: Api, names: list[str]) -> None:
    rows = api.rows({"date": "2024-01-15", "event_names": names, "fields": ["event_name"]})
    assert rows
    assert {row["event_name"] for row in rows} <= set(names)


def test_sources_add_touchpoint_id_but_not_source(api: Api) -> None:
    body = {"sources": ["facebook_ads"], "attribution_model": "last_touch", "attribution_window": 30}
    rows = api.rows({"date": "2024-01-15", **body, "fields": ["amount"]})
    assert all(set(row) == {"id", "event_time_utc", "touchpoint_id", "amount"} for row in rows)
    assert len(rows) == 300  # single-touch: one row per event


@pytest.mark.parametrize("ad_field", AD_FIELDS)
def test_ad_hierarchy_fields_add_source(api: Api, ad_field: str) -> None:
    sources = ["facebook_ads", "google_ads", "email"]
    body = {"sources": sources, "attribution_model": "last_touch", "attribution_window": 7}
    rows = api.rows({"date": "2024-01-15", **body, "fields": [ad_field]})
    assert all(set(row) == {"id", "event_time_utc", "touchpoint_id", "source", ad_field} for row in rows)
    assert {row["source"] for row in rows} <= set(sources)
    paid = [row for row in rows if row["source"].endswith("_ads")]
    assert paid
    assert all(isinstance(row[ad_field], str) and row[ad_field] for row in paid)


def test_no_touchpoint_id_or_source_without_sources(api: Api) -> None:
    rows = api.rows({"date": "2024-01-15", "fields": ["event_name", "amount"]})
    assert all("touchpoint_id" not in row and "source" not in row for row in rows)


@pytest.mark.parametrize("model", ["linear", "u_shaped", "linear_paid"])
def test_multi_touch_partial_amounts_add_up_to_the_event_amount(api: Api, model: str) -> None:
    base = {
        "date": "2024-01-15",
        "event_names": ["purchase"],
        "sources": ["facebook_ads", "google_ads", "tiktok_ads"],
        "attribution_window": 30,
        "fields": ["amount", "ad_id"],
    }
    single = api.rows({**base, "attribution_model": "last_touch"})
    multi = api.rows({**base, "attribution_model": model})
    event_amounts = {row["id"]: _cents(row["amount"]) for row in single}
    grouped = _by_event(multi)
    assert set(grouped) == set(event_amounts)  # the same events, viewed per touchpoint
    assert len(multi) > len(single)
    sizes = {len(touchpoints) for touchpoints in grouped.values()}
    assert sizes <= {1, 2, 3, 4}
    assert len(sizes) > 1
    for event_id, touchpoints in grouped.items():
        parts = [_cents(row["amount"]) for row in touchpoints]
        assert sum(parts) == event_amounts[event_id]
        assert len({row["touchpoint_id"] for row in touchpoints}) == len(touchpoints)
        total = event_amounts[event_id]
        if model == "u_shaped" and len(parts) >= 3:
            # 40 % first, 40 % last, 20 % split over the middle
            assert parts[0] == parts[-1] == total * 40 // 100
            assert abs(sum(parts[1:-1]) - total * 20 / 100) < 2  # the ends' rounding goes to the middle
            assert max(parts[1:-1]) - min(parts[1:-1]) <= 1
        elif len(parts) > 1:  # linear, and u_shaped with two touchpoints (50/50)
            assert max(parts) - min(parts) <= 1


@pytest.mark.parametrize(
    "model", ["first_touch", "last_touch", "first_platform_touch", "last_non_direct_touch"]
)
def test_single_touch_models_give_one_row_per_event(api: Api, model: str) -> None:
    body = {"sources": ["google_ads", "email"], "attribution_model": model, "attribution_window": 0}
    rows = api.rows({"date": "2024-01-15", **body, "fields": ["campaign_id"]})
    assert len(rows) == len({row["id"] for row in rows}) == 300
    if model == "first_platform_touch":
        assert {row["source"] for row in rows} == {"google_ads"}  # paid touches only


def test_same_seed_gives_identical_bytes_and_another_seed_does_not() -> None:
    def download(seed: int) -> bytes:
        with run_simulator(seed=seed, queued_seconds=0, processing_seconds=0, export_rows=500) as sim:
            api = Api(sim)
            body = {"date": "2024-01-15", "fields": ["event_name", "amount", "profile_id", "event_url"]}
            status = api.wait(api.export_id(body))
            return api.download(status["download_url"]).content

    assert download(7) == download(7)
    assert download(7) != download(8)


def test_other_days_get_other_events(api: Api) -> None:
    first = api.rows({"date": "2024-01-15", "fields": ["event_name"]})
    second = api.rows({"date": "2024-01-16", "fields": ["event_name"]})
    assert all(row["event_time_utc"].startswith("2024-01-16T") for row in second)
    assert {row["id"] for row in first}.isdisjoint({row["id"] for row in second})


@pytest.mark.cometly_simulator(export_rows=0)
def test_empty_day_is_a_valid_empty_gzip(api: Api) -> None:
    status = api.wait(api.export_id({"date": "2024-01-15"}))
    content = api.download(status["download_url"]).content
    assert content[:2] == b"\x1f\x8b"
    assert gzip.decompress(content) == b""


@pytest.mark.cometly_simulator(export_rows_by_date={"2024-01-14": 0, "2024-01-15": 42})
def test_rows_per_date_override(api: Api) -> None:
    assert len(api.rows({"date": "2024-01-15"})) == 42
    assert api.rows({"date": "2024-01-14"}) == []
    assert len(api.rows({"date": "2024-01-13"})) == 300


@pytest.mark.cometly_simulator(row_padding_bytes=500)
def test_row_padding_makes_event_url_long_and_incompressible(sim: CometlySimulator, api: Api) -> None:
    rows = api.rows({"date": "2024-01-15", "fields": ["event_url"]})
    assert all(len(row["event_url"]) > 500 for row in rows)
    assert len({row["event_url"] for row in rows}) == len(rows)
    record = next(iter(sim.exports.values()))
    assert record.size is not None
    assert record.size > 300 * 300  # high entropy: the padding does not compress away
    assert len(api.rows({"date": "2024-01-15", "fields": ["amount"]})[0]) == 3  # no padding without event_url


@pytest.mark.cometly_simulator(export_rows=250_000)
def test_large_export_streams_line_by_line(api: Api) -> None:
    status = api.wait(api.export_id({"date": "2024-01-15", "fields": ["event_name"]}), timeout=60)
    response = api.session.get(status["download_url"], stream=True, timeout=30)
    with gzip.GzipFile(fileobj=response.raw) as lines:
        count = sum(1 for _ in lines)
    assert count == 250_000


def test_default_rows_compress_like_real_exports(tmp_path: Any) -> None:
    """Every non-attribution field, no padding: ~8:1 like real exports (the download benchmark's data)."""
    from cometly_provider.testing._exports import ExportSpec, write_export

    fields = ("profile_id", "company_id", "space_id", "event_name", "configured_name", "amount")
    spec = ExportSpec(
        date="2024-01-15",
        query_mode="profile",
        event_names=None,
        sources=None,
        attribution_model=None,
        attribution_window=None,
        fields=(*fields, "is_upsell", "order_id", "order_name", "event_url"),
        rows=20_000,
        seed=1,
        padding=0,
        gzip_level=6,
    )
    export = write_export(spec, str(tmp_path / "e.gz"))
    with open(export.path, "rb") as handle:
        plain = gzip.decompress(handle.read())
    assert 6.5 <= len(plain) / export.size <= 9.5
    urls = [line.split(b'"event_url":')[1] for line in plain.splitlines()[:1000]]
    assert sum(b"clid=" in url or b"msclkid=" in url or b"mc_eid=" in url for url in urls) > 400  # click ids
