"""Deterministic contact rows for the simulator's contacts exports (README.md "Contacts exports").

One contact per line: ``id``, ``email``, ``name``, ``phone``, ``location``, ``created_at`` (ISO 8601,
UTC; the Space's timezone is taken to be UTC), plus ``comet_tokens`` (the last 5, most recent first)
with ``include_comet_tokens`` and ``emails`` (every email, merged profiles included, the primary
first) with ``include_all_emails``. ``rows`` contacts are spread evenly over ``[start, end]``;
everything is seeded by (seed, start, end, rows), so the same export is byte-identical every time,
and the flags only add columns to the same contacts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from dataclasses import asdict, dataclass

_BATCH = 2048
_FIRST = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Mateo", "Sophia", "Lucas", "Isabella", "Elijah",
    "Mia", "Hiro", "Amara", "Chen", "Priya", "Jonas", "Fatima", "Diego", "Zoe", "Kwame",
)  # fmt: skip
_LAST = (
    "Smith", "Garcia", "Johnson", "Nguyen", "Müller", "Brown", "Rossi", "Kim", "Silva", "Okafor",
    "Patel", "Dubois", "Kowalski", "Tanaka", "Haddad", "Larsen", "Moreno", "O'Brien", "Novak", "Cohen",
)  # fmt: skip
_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me", "acme-corp.com")
_LOCATIONS = (
    "Austin, TX, US", "London, GB", "Berlin, DE", "Toronto, ON, CA", "Sydney, NSW, AU",
    "São Paulo, BR", "Lagos, NG", "Mumbai, IN", "Paris, FR", "Denver, CO, US", None,
)  # fmt: skip
_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # noqa: S105 - comet token characters, no secret


@dataclass(frozen=True)
class ContactsSpec:
    """Everything that determines a contacts export file's bytes (and so its cache key)."""

    start: str  # "YYYY-MM-DD HH:MM:SS"
    end: str
    include_comet_tokens: bool
    include_all_emails: bool
    rows: int
    seed: int
    gzip_level: int

    @property
    def date(self) -> str:
        return self.start[:10]

    def cache_key(self) -> str:
        blob = json.dumps(["contacts", asdict(self)], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def generator(self) -> ContactsGenerator:
        return ContactsGenerator(self)


class ContactsGenerator:
    """Formats the contacts of one export, batch by batch, as bytes (see ``write_export``)."""

    pad_pool = ""  # no benchmark padding for contacts

    def __init__(self, spec: ContactsSpec) -> None:
        self.spec = spec
        self.events = spec.rows  # rows of the file: one per contact
        self.start = dt.datetime.fromisoformat(spec.start).replace(tzinfo=dt.UTC)
        self.span = (dt.datetime.fromisoformat(spec.end).replace(tzinfo=dt.UTC) - self.start).total_seconds()
        self.key = hashlib.sha256(f"{spec.seed}:{spec.start}:{spec.end}:{spec.rows}".encode()).hexdigest()

    def batches(self) -> range:
        return range((self.events + _BATCH - 1) // _BATCH)

    def batch(self, index: int) -> tuple[bytes, int]:
        first = index * _BATCH
        count = min(_BATCH, self.events - first)
        rng = random.Random(f"{self.key}:{index}")
        lines = []
        for j in range(first, first + count):
            contact = self._contact(j, rng)
            lines.append(json.dumps(contact, ensure_ascii=False, separators=(",", ":")))
        return ("\n".join(lines) + "\n").encode(), count

    def _contact(self, j: int, rng: random.Random) -> dict[str, object]:
        given, family = rng.choice(_FIRST), rng.choice(_LAST)
        local = f"{given}.{family}".lower().replace("'", "").replace("ü", "u")
        email = f"{local}{rng.randrange(100) if rng.random() < 0.4 else ''}@{rng.choice(_DOMAINS)}"
        offset = self.span * (j + 0.5) / max(self.events, 1) if self.span > 0 else 0.0
        created = self.start + dt.timedelta(seconds=int(offset))
        contact: dict[str, object] = {
            "id": 5_000_000 + int(self.key[:6], 16) % 1_000_000 * 100 + j,
            "email": email,
            "name": f"{given} {family}",
            "phone": f"+1{rng.randrange(200, 999)}{rng.randrange(1_000_000, 9_999_999)}"
            if rng.random() < 0.7
            else None,
            "location": rng.choice(_LOCATIONS),
            "created_at": created.isoformat().replace("+00:00", "Z"),
        }
        if self.spec.include_comet_tokens:
            contact["comet_tokens"] = [
                "".join(rng.choices(_TOKEN_ALPHABET, k=24)) for _ in range(rng.randrange(1, 6))
            ]
        if self.spec.include_all_emails:
            extra = [f"{local}@{domain}" for domain in rng.sample(_DOMAINS, rng.randrange(0, 3))]
            contact["emails"] = [email, *(e for e in extra if e != email)]
        return contact
