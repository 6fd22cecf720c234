"""Control a simulator running in another process, over its ``/_simulator/`` admin API."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from cometly_provider.testing._models import (
    API_PREFIX,
    ExportRecord,
    FaultRule,
    RequestRecord,
    SimulatorConfig,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

_READY_RE = re.compile(r"Cometly simulator listening on (http://\S+)")


class SimulatorError(RuntimeError):
    """The simulator's admin API refused a request (bad fault, bad config value, ...)."""


class SimulatorClient:
    """The :class:`CometlySimulator` inspection / control API for a simulator in another process.

    Standard library only. ``config`` is a snapshot: change options with ``update_config``.
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0, process: subprocess.Popen[str] | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        #: The simulator's process when started by :func:`spawn_simulator`.
        self.process = process
        self._api_key: str | None = None

    # --- transport --------------------------------------------------------------------------------

    def _call(self, method: str, route: str, body: Any = None, **query: str) -> Any:
        url = f"{self.base_url}/_simulator/{route}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked in __init__
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - see above
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", str(exc))
            except ValueError:
                message = str(exc)
            raise SimulatorError(message) from None

    # --- identity ---------------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def api_key(self) -> str:
        if self._api_key is None:
            self._api_key = str(self._call("GET", "config")["api_key"])
        return self._api_key

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def health(self) -> bool:
        try:
            return bool(self._call("GET", "health").get("status") == "ok")
        except (OSError, SimulatorError):
            return False

    # --- inspection -------------------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        return SimulatorConfig.from_dict(self._call("GET", "config"))

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "events")["events"])

    @property
    def duplicates(self) -> int:
        return int(self._call("GET", "events")["duplicates"])

    @property
    def requests(self) -> list[RequestRecord]:
        return [RequestRecord.from_dict(r) for r in self._call("GET", "requests")["requests"]]

    def requests_for(self, endpoint: str) -> list[RequestRecord]:
        data = self._call("GET", "requests", endpoint=endpoint)
        return [RequestRecord.from_dict(r) for r in data["requests"]]

    def status_counts(self, endpoint: str | None = None) -> dict[int | None, int]:
        data = self._call("GET", "status-counts", **({"endpoint": endpoint} if endpoint else {}))
        return {status: int(n) for status, n in data["counts"]}

    @property
    def exports(self) -> dict[int, ExportRecord]:
        return {e["export_id"]: ExportRecord.from_dict(e) for e in self._call("GET", "exports")["exports"]}

    @property
    def faults(self) -> list[FaultRule]:
        return [FaultRule.from_dict(f) for f in self._call("GET", "faults")["faults"]]

    @property
    def issued_signatures(self) -> list[str]:
        return list(self._call("GET", "signatures")["signatures"])

    # --- control ----------------------------------------------------------------------------------

    def update_config(self, **changes: Any) -> SimulatorConfig:
        if "api_key" in changes:
            self._api_key = None
        return SimulatorConfig.from_dict(self._call("PATCH", "config", changes))

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def inject(
        self,
        endpoint: str,
        kind: str,
        *,
        times: int | None = 1,
        after: int = 0,
        every: int = 1,
        **params: Any,
    ) -> FaultRule:
        body = {
            "endpoint": endpoint,
            "kind": kind,
            "times": times,
            "after": after,
            "every": every,
            "params": params,
        }
        return FaultRule.from_dict(self._call("POST", "faults", body)["fault"])

    def clear_faults(self, endpoint: str | None = None) -> None:
        self._call("DELETE", "faults", **({"endpoint": endpoint} if endpoint else {}))

    def next_exports_outcome(self, outcome: str, count: int = 1, message: str | None = None) -> None:
        self._call("POST", "export-outcomes", {"outcome": outcome, "count": count, "message": message})


@contextlib.contextmanager
def spawn_simulator(
    config: SimulatorConfig | None = None, *, startup_timeout: float = 30.0, **options: Any
) -> Iterator[SimulatorClient]:
    """Run the simulator CLI in a subprocess on a free port; yield a client; terminate it on exit.

    The client's ``process`` / ``pid`` give access to the process (e.g. to read its memory use).
    """
    settings = config if config is not None else SimulatorConfig()
    if options:
        settings = SimulatorConfig.from_dict({**settings.to_dict(), **options})
    data = settings.to_dict()
    data["port"] = 0
    # The key goes through the environment rather than the command line (visible in ps).
    env = {**os.environ, "COMETLY_SIMULATOR_API_KEY": data.pop("api_key")}
    command = [sys.executable, "-m", "cometly_provider.testing.simulator", "--config-json", json.dumps(data)]
    # Fixed argv of our own module and JSON; no shell.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)  # noqa: S603
    try:
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:  # keeps draining so the child never blocks on a full pipe
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, name="cometly-sim-stdout", daemon=True).start()
        try:
            line = lines.get(timeout=startup_timeout)
        except queue.Empty:
            raise RuntimeError(f"simulator did not start within {startup_timeout} s") from None
        match = _READY_RE.search(line)
        if match is None:
            raise RuntimeError(f"simulator failed to start (exit code {process.poll()}): {line!r}")
        yield SimulatorClient(match.group(1), process=process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
