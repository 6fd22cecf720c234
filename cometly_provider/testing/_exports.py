"""Deterministic generation of export files (gzipped NDJSON) for the Cometly simulator.

The simulator invents, for each export, a day of events that matches the query:

* ``rows`` events (``export_rows`` / ``export_rows_by_date``) *after* filtering, so a test knows how
  many events it gets; names are drawn from ``event_names`` when given, else from a weighted mix
  of standard events (and a few custom / ``upsell_purchase`` ones);
* events are spread over the day in time order (the space's timezone is taken to be UTC);
* with ``sources``, every event is attributed to touchpoints drawn from the requested sources
  (restricted to paid ``*_ads`` sources for ``*_platform_touch`` / ``linear_paid``, and to
  non-``direct`` ones for ``last_non_direct_touch``; if none is eligible the export is empty).
  Multi-touch models give 1..4 rows per event whose partial amounts (integer cents) add up exactly
  to the event amount; ``u_shaped`` credits 40 % first / 40 % last / 20 % split over the middle
  (50/50 with two touchpoints, 100 % with one);
* ad-hierarchy values exist only for paid sources; they are ``null`` for organic / other sources,
  as ``order_id`` / ``order_name`` are ``null`` for events that are not orders.

Everything is seeded by (seed, date, query, rows, padding), so the same export is byte-identical
every time. The events themselves (ids, times, names, amounts, profiles) depend only on seed, date,
query_mode, event_names and rows: exports of one day with different sources / models / fields are
views of the same events, so e.g. the partial amounts of a ``linear`` export add up to the amounts
of a ``last_touch`` export of the same day.

The file is produced as a stream, in constant memory: rows are formatted in batches (columns
joined through one ``%`` template), and compressed pigz-style on a small thread pool
(zlib releases the GIL) into *one* gzip member: independent raw-deflate chunks (each primed with
the previous 32 KiB as dictionary) ended by sync flushes, one final empty block, CRC-32 and size.
A single member matters: some streaming clients stop after the first member of a multi-member
file. With ``row_padding_bytes`` (a benchmark knob) the deflate strategy is ``Z_RLE``: searching
for matches in random padding only burns CPU.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import random
import struct
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from cometly_provider.testing._rules import AD_HIERARCHY_FIELDS, MULTI_TOUCH_MODELS, PAID_SOURCES

if TYPE_CHECKING:
    from collections.abc import Callable

    from cometly_provider.testing._contacts import ContactsSpec

_BATCH_EVENTS = 4096
_CHUNK_BYTES = 1 << 20
_DICT_BYTES = 32 * 1024
_PAD_POOL_BYTES = 3 << 20  # 4 MiB of base64 text: far larger than deflate's 32 KiB window

# A plausible mix for a Space: lots of page views and leads, fewer orders.
_DEFAULT_EVENT_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("view_content", 30),
    ("lead_generated", 12),
    ("purchase", 12),
    ("add_to_cart", 10),
    ("initiate_checkout", 8),
    ("sign_up", 6),
    ("complete_registration", 4),
    ("subscribe", 3),
    ("contact", 3),
    ("schedule", 2),
    ("start_trial", 2),
    ("add_payment_info", 2),
    ("submit_application", 2),
    ("webinar_registration", 2),
    ("upsell_purchase", 2),
    ("custom_event_1", 2),
    ("custom_event_2", 1),
    ("custom_event_3", 1),
)
_ORDER_EVENTS = frozenset({"purchase", "upsell_purchase", "subscribe"})
_CUSTOM_NAMES: tuple[str, ...] = (
    "Demo Booked",
    "Qualified Lead",
    "Call Completed",
    "Quote Requested",
    "Trial Activated",
    "Proposal Sent",
    "Deal Won",
)
_URL_PATHS: tuple[str, ...] = ("checkout/success", "thank-you", "pricing", "blog/attribution", "signup", "")
# Realistic landing pages: a path, the campaign's UTM tags and the ad platform's click id. The click
# id is what makes real exports compress ~8:1 rather than 15-25:1: it is random, one per visit.
_LANDING_PATHS: tuple[str, ...] = (
    *_URL_PATHS,
    *(
        f"products/{kind}-{n}"
        for kind in ("sneaker", "jacket", "backpack", "watch", "lamp")
        for n in range(40)
    ),
    *(f"blog/{topic}" for topic in ("attribution-101", "ios-tracking", "roas", "utm-guide", "capi")),
)
# (utm_source, utm_medium, click-id parameter, its length); two in five visits are untagged.
_CAMPAIGN_SOURCES: tuple[tuple[str, str, str, int], ...] = (
    ("facebook", "paid_social", "fbclid", 61),
    ("google", "cpc", "gclid", 54),
    ("tiktok", "paid_social", "ttclid", 42),
    ("bing", "cpc", "msclkid", 32),
    ("newsletter", "email", "mc_eid", 10),
)
_CAMPAIGNS = 48
_CLICK_ID_POOL_BYTES = 3 << 20  # 4 MiB of url-safe base64: far larger than deflate's 32 KiB window


class ExportCancelled(Exception):
    """Generation stopped because the simulator is shutting down."""


@dataclass(frozen=True)
class ExportSpec:
    """Everything that determines an export file's bytes (and so its cache key)."""

    date: str
    query_mode: str
    event_names: tuple[str, ...] | None
    sources: tuple[str, ...] | None
    attribution_model: str | None
    attribution_window: int | None
    fields: tuple[str, ...]  # requested fields, without the always-included ones
    rows: int
    seed: int
    padding: int
    gzip_level: int

    def cache_key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def generator(self) -> _Generator:
        return _Generator(self)

    def events_key(self) -> str:
        """Seed of the day's events: the attribution view (sources, model, fields) does not change them."""
        blob = json.dumps([self.date, self.query_mode, self.event_names, self.rows, self.seed]).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


@dataclass(frozen=True)
class ExportFile:
    """A finished export file."""

    path: str
    size: int
    etag: str  # S3-style: quoted MD5 of the object's bytes
    lines: int
    events: int


@lru_cache(maxsize=1)
def _clock_table() -> tuple[str, ...]:
    return tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400))


def _cents(value: int) -> str:
    return f"{value // 100}.{value % 100:02d}" if value else "0"


def _split(total: int, n: int, model: str) -> list[int]:
    """Partial credits in cents for ``n`` touchpoints that add up exactly to ``total``."""
    if n == 1:
        return [total]
    if model == "u_shaped" and n > 2:
        end = total * 40 // 100
        middle = total - 2 * end
        base, extra = divmod(middle, n - 2)
        return [end] + [base + (1 if k < extra else 0) for k in range(n - 2)] + [end]
    # linear, linear_paid, and u_shaped with two touchpoints (50/50)
    base, extra = divmod(total, n)
    return [base + (1 if k < extra else 0) for k in range(n)]


def eligible_sources(sources: tuple[str, ...] | None, model: str | None) -> tuple[str, ...]:
    if not sources:
        return ()
    if model in ("first_platform_touch", "last_platform_touch", "linear_paid"):
        return tuple(s for s in sources if s in PAID_SOURCES)
    if model == "last_non_direct_touch":
        return tuple(s for s in sources if s != "direct")
    return sources


@lru_cache(maxsize=4)
def _click_id_pool(seed: int) -> str:
    return base64.urlsafe_b64encode(
        random.Random(f"{seed}:click-ids").randbytes(_CLICK_ID_POOL_BYTES)
    ).decode()


def _landing_urls(click_ids: str, rand: memoryview, ev_ids: list[int], count: int) -> list[str]:
    """The page each event happened on, as an ad click would land there (the default ``event_url``)."""
    paths, sources = _LANDING_PATHS, _CAMPAIGN_SOURCES
    span = len(click_ids) - 64
    urls = []
    for j in range(count):
        r = rand[8 * j + 3]
        url = f"https://shop.example.com/{paths[rand[8 * j + 6] % len(paths)]}?eid={ev_ids[j]}"
        if r % 5 >= 2:
            source, medium, click_param, length = sources[(r >> 3) % len(sources)]
            start = (r >> 6) % span
            url += (
                f"&utm_source={source}&utm_medium={medium}&utm_campaign=spring_{(r >> 1) % _CAMPAIGNS:02d}"
                f"&{click_param}={click_ids[start : start + length]}"
            )
        urls.append(url)
    return urls


def _padded_urls(pool: str, pad: int, rand: memoryview, ev_ids: list[int], count: int) -> list[str]:
    """Benchmark mode (``row_padding_bytes``): short URLs carrying ``pad`` incompressible bytes each."""
    paths = _URL_PATHS
    span = len(pool) - pad
    return [
        f"https://shop.example.com/{paths[rand[8 * j + 6] % len(paths)]}?eid={ev_ids[j]}"
        f"&pad={pool[o : o + pad]}"
        for j, o in zip(range(count), (rand[8 * j + 7] % span for j in range(count)), strict=True)
    ]


class _Generator:
    """Formats the rows of one export, batch by batch, as bytes."""

    def __init__(self, spec: ExportSpec) -> None:
        self.spec = spec
        self.key = spec.cache_key()
        self.events_key = spec.events_key()
        day = dt.date.fromisoformat(spec.date)
        self.prefix = f"{day.isoformat()}T"
        self.id_base = day.toordinal() * 100_000_000
        self.space_id = 1000 + spec.seed % 9000
        if spec.event_names:
            self.names: tuple[str, ...] = spec.event_names
        else:
            self.names = tuple(name for name, weight in _DEFAULT_EVENT_WEIGHTS for _ in range(weight))
        self.attributed = spec.sources is not None
        self.sources = eligible_sources(spec.sources, spec.attribution_model)
        self.multi = spec.attribution_model in MULTI_TOUCH_MODELS
        self.with_source = any(f in AD_HIERARCHY_FIELDS for f in spec.fields)
        self.events = 0 if (self.attributed and not self.sources) else spec.rows
        self.clock = _clock_table()
        self.pad_pool = ""
        self.click_id_pool = ""
        if spec.padding and "event_url" in spec.fields:
            rng = random.Random(f"{self.events_key}:pad")
            self.pad_pool = base64.urlsafe_b64encode(rng.randbytes(_PAD_POOL_BYTES)).decode()
        elif "event_url" in spec.fields:
            self.click_id_pool = _click_id_pool(spec.seed)

        keys = ["id", "event_time_utc"]
        if self.attributed:
            keys.append("touchpoint_id")
        if self.with_source:
            keys.append("source")
        keys.extend(spec.fields)
        self.keys = keys
        # Every value is pre-rendered as a JSON token, so one template formats a whole row.
        self.template = "{" + ",".join(f'"{k}":%s' for k in keys) + "}\n"

    def batches(self) -> range:
        return range((self.events + _BATCH_EVENTS - 1) // _BATCH_EVENTS)

    def batch(self, index: int) -> tuple[bytes, int]:
        """Rows of events [index * B, (index + 1) * B) and how many rows that is."""
        spec = self.spec
        start = index * _BATCH_EVENTS
        count = min(_BATCH_EVENTS, self.events - start)
        rand = memoryview(random.Random(f"{self.events_key}:{index}").randbytes(4 * 8 * count)).cast("I")
        touch = memoryview(random.Random(f"{self.key}:{index}").randbytes(4 * count)).cast("I")
        total = self.events
        step = 86400 // total if total < 86400 else 0
        names = self.names
        n_names = len(names)
        clock = self.clock

        ev_ids = [self.id_base + start + j for j in range(count)]
        secs = [((start + j) * 86400) // total + (rand[8 * j] % step if step else 0) for j in range(count)]
        ev_names = [names[rand[8 * j + 1] % n_names] for j in range(count)]
        ev_amounts = [
            500 + rand[8 * j + 2] % 49_500 if name in _ORDER_EVENTS else 0 for j, name in enumerate(ev_names)
        ]

        # Rows: one per event, or one per touchpoint with attribution.
        if self.attributed:
            sources = self.sources
            n_src = len(sources)
            row_ev: list[int] = []
            row_tp: list[int] = []
            row_src: list[str] = []
            row_amount: list[int] = []
            for j in range(count):
                r = touch[j]
                n_tp = 1 + r % 4 if self.multi else 1
                credits = _split(ev_amounts[j], n_tp, spec.attribution_model or "") if self.multi else None
                for k in range(n_tp):
                    row_ev.append(j)
                    row_tp.append(ev_ids[j] * 10 + k)
                    row_src.append(sources[(r >> (4 + 5 * k)) % n_src])
                    row_amount.append(credits[k] if credits else ev_amounts[j])
        else:
            row_ev = list(range(count))
            row_tp = []
            row_src = []
            row_amount = ev_amounts
        expand = self.attributed and self.multi

        def per_row(values: list[str]) -> list[str]:
            return [values[j] for j in row_ev] if expand else values

        prefix = self.prefix
        columns: list[list[str] | list[int]] = [
            per_row([str(i) for i in ev_ids]),
            per_row([f'"{prefix}{clock[s]}Z"' for s in secs]),
        ]
        if self.attributed:
            columns.append(row_tp)
        if self.with_source:
            columns.append([f'"{s}"' for s in row_src])
        for field in spec.fields:
            columns.append(
                self._column(field, count, rand, ev_ids, ev_names, row_ev, row_src, row_amount, per_row)
            )
        text = "".join(map(self.template.__mod__, zip(*columns, strict=True)))
        return text.encode(), len(row_ev)

    def _column(
        self,
        field: str,
        count: int,
        rand: memoryview,
        ev_ids: list[int],
        ev_names: list[str],
        row_ev: list[int],
        row_src: list[str],
        row_amount: list[int],
        expand: Callable[[list[str]], list[str]],
    ) -> list[str]:
        if field == "amount":
            return [_cents(a) for a in row_amount]
        if field == "event_name":
            return expand([f'"{n}"' for n in ev_names])
        if field == "configured_name":
            return expand(
                [
                    f'"{_CUSTOM_NAMES[int(n[13:]) % len(_CUSTOM_NAMES)]}"'
                    if n.startswith("custom_")
                    else f'"{n}"'
                    for n in ev_names
                ]
            )
        if field == "profile_id":
            return expand([str(1_000_000 + rand[8 * j + 4] % 500_000) for j in range(count)])
        if field == "company_id":
            return expand([str(10_000 + rand[8 * j + 4] % 20_000) for j in range(count)])
        if field == "space_id":
            return expand([str(self.space_id)] * count)
        if field == "is_upsell":
            return expand(
                [
                    "true"
                    if n == "upsell_purchase" or (n == "purchase" and rand[8 * j + 5] % 20 == 0)
                    else "false"
                    for j, n in enumerate(ev_names)
                ]
            )
        if field == "order_id":
            return expand(
                [
                    f'"ORD-{i}"' if n in _ORDER_EVENTS else "null"
                    for i, n in zip(ev_ids, ev_names, strict=True)
                ]
            )
        if field == "order_name":
            return expand(
                [
                    f'"Order #{i}"' if n in _ORDER_EVENTS else "null"
                    for i, n in zip(ev_ids, ev_names, strict=True)
                ]
            )
        if field == "event_url":
            if self.pad_pool:
                urls = _padded_urls(self.pad_pool, self.spec.padding, rand, ev_ids, count)
            else:
                urls = _landing_urls(self.click_id_pool, rand, ev_ids, count)
            return expand([f'"{u}"' for u in urls])
        if field in AD_HIERARCHY_FIELDS:
            return [self._ad_value(field, src, ev_ids[j]) for j, src in zip(row_ev, row_src, strict=True)]
        raise ValueError(f"unknown export field {field!r}")

    def _ad_value(self, field: str, source: str, event_id: int) -> str:
        if source not in PAID_SOURCES:
            return "null"
        # A small, stable ad tree per source: 2 accounts x 3 campaigns x 2 ad sets x 2 ads.
        h = (event_id * 2654435761 + PAID_SOURCES.index(source)) & 0xFFFFFFFF
        account, campaign, adset, ad = h % 2, h // 2 % 3, h // 6 % 2, h // 12 % 2
        platform = source.removesuffix("_ads")
        base = (PAID_SOURCES.index(source) + 1) * 10**15 + self.spec.seed % 1000 * 10**12
        if field == "account_id":
            return f'"{base + account}"'
        if field == "account_name":
            return f'"{platform.title()} Account {account + 1}"'
        if field == "campaign_id":
            return f'"{base + 10**6 * (account * 10 + campaign + 1)}"'
        if field == "campaign_name":
            return f'"{platform.title()} Campaign {account * 3 + campaign + 1}"'
        if field == "adset_id":
            return f'"{base + 10**6 * (account * 10 + campaign + 1) + 1000 * (adset + 1)}"'
        if field == "adset_name":
            return f'"Ad Set {campaign * 2 + adset + 1}"'
        if field == "ad_id":
            return f'"{base + 10**6 * (account * 10 + campaign + 1) + 1000 * (adset + 1) + ad + 1}"'
        return f'"Ad {adset * 2 + ad + 1} - {platform}"'  # ad_name


def _compress_chunk(level: int, strategy: int, data: bytes, zdict: bytes) -> bytes:
    if zdict:
        comp = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy, zdict)
    else:
        comp = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
    return comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)


def write_export(
    spec: ExportSpec | ContactsSpec,
    path: str,
    cancel: threading.Event | None = None,
    workers: int | None = None,
) -> ExportFile:
    """Generate the export described by ``spec`` into ``path`` (atomically, via ``path + '.part'``)."""
    gen = spec.generator()
    # LZ77 matching over random padding is wasted CPU: padded (benchmark) exports use run-length
    # matching only, which doubles the gzip output rate. Unpadded exports compress normally.
    strategy = zlib.Z_RLE if gen.pad_pool else zlib.Z_DEFAULT_STRATEGY
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    md5 = hashlib.md5(usedforsecurity=False)
    crc = 0
    raw_size = 0
    lines = 0
    size = 0
    part = path + ".part"
    pending: deque[Future[bytes]] = deque()
    with open(part, "wb") as out, ThreadPoolExecutor(workers, thread_name_prefix="cometly-sim-gzip") as pool:

        def emit(data: bytes) -> None:
            nonlocal size
            out.write(data)
            md5.update(data)
            size += len(data)

        def drain(limit: int) -> None:
            while len(pending) > limit:
                emit(pending.popleft().result())

        # gzip header: deflate, no flags, mtime 0 (reproducible bytes), max-compression hint, OS unknown
        emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + (b"\x02" if spec.gzip_level >= 9 else b"\x00") + b"\xff")
        buffer: list[bytes] = []
        buffered = 0
        zdict = b""

        def submit(data: bytes) -> None:
            nonlocal zdict
            pending.append(pool.submit(_compress_chunk, spec.gzip_level, strategy, data, zdict))
            zdict = data[-_DICT_BYTES:]
            drain(2 * workers)

        for index in gen.batches():
            if cancel is not None and cancel.is_set():
                raise ExportCancelled(spec.date)
            data, n = gen.batch(index)
            lines += n
            crc = zlib.crc32(data, crc)
            raw_size += len(data)
            buffer.append(data)
            buffered += len(data)
            if buffered >= _CHUNK_BYTES:
                submit(b"".join(buffer))
                buffer, buffered = [], 0
        if buffer:
            submit(b"".join(buffer))
        drain(0)
        # A final, empty fixed-Huffman block closes the deflate stream; then CRC-32 and ISIZE.
        emit(b"\x03\x00" + struct.pack("<II", crc, raw_size & 0xFFFFFFFF))
    os.replace(part, path)
    return ExportFile(path=path, size=size, etag=f'"{md5.hexdigest()}"', lines=lines, events=gen.events)
