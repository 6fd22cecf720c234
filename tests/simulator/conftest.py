"""Helpers for the simulator's own tests: real sockets, ``requests``, literal values from the reference.

The simulator comes from the ``cometly_simulator`` fixture of the provider's pytest plugin (so the
plugin is exercised by every test here). Timings are shortened so the module runs in seconds.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import requests

if TYPE_CHECKING:
    from cometly_provider.testing import CometlySimulator


@pytest.fixture
def cometly_simulator_config() -> dict[str, Any]:
    return {"queued_seconds": 0.05, "processing_seconds": 0.1, "export_rows": 300}


class Api:
    """A thin client for the simulator's public API (what a real Cometly user would send)."""

    def __init__(self, sim: CometlySimulator) -> None:
        self.sim = sim
        self.session = requests.Session()
        self.headers = {
            "Authorization": f"Bearer {sim.api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }

    def url(self, path: str) -> str:
        return self.sim.api_base + path

    def post(self, path: str, body: Any, *, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(self.headers)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.session.post(self.url(path), data=json.dumps(body), headers=headers, timeout=10, **kwargs)

    def track(self, body: Any, **kwargs: Any) -> requests.Response:
        return self.post("/events/track", body, **kwargs)

    def create_export(self, body: Any, **kwargs: Any) -> requests.Response:
        return self.post("/events/exports", body, **kwargs)

    def status(self, export_id: Any, *, key: str | None = None) -> requests.Response:
        headers = dict(self.headers)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.session.get(self.url(f"/events/exports/{export_id}"), headers=headers, timeout=10)

    def export_id(self, body: dict[str, Any]) -> int:
        response = self.create_export(body)
        assert response.status_code == 202, response.text
        return int(response.json()["export_id"])

    def wait(self, export_id: int, *, until: str = "completed", timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = self.status(export_id)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] == until:
                return body
            assert body["status"] in ("queued", "processing"), body
            assert time.monotonic() < deadline, f"export {export_id} still {body['status']}"
            time.sleep(0.03)

    def download(self, url: str, **headers: str) -> requests.Response:
        # No Authorization header: presigned URLs need none.
        return requests.get(url, headers=headers, timeout=30)

    def rows(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Create an export, wait for it, download it and parse its lines."""
        status = self.wait(self.export_id(body))
        response = self.download(status["download_url"])
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in gzip.decompress(response.content).splitlines()]


@pytest.fixture
def sim(cometly_simulator: CometlySimulator) -> CometlySimulator:
    return cometly_simulator


@pytest.fixture
def api(sim: CometlySimulator) -> Iterator[Api]:
    client = Api(sim)
    yield client
    client.session.close()


def errors_of(response: requests.Response) -> dict[str, list[str]]:
    """The Laravel ``errors`` map of a 422, after checking the body's shape."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert isinstance(body["message"], str)
    assert body["message"]
    errors: dict[str, list[str]] = body["errors"]
    assert body["message"].startswith(next(iter(errors.values()))[0])
    return errors
