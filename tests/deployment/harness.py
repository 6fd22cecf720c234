"""A real local Airflow deployment: api-server, scheduler (LocalExecutor), dag-processor, triggerer.

Used by the ``deployment`` pytest fixture (``tests/deployment/conftest.py``) and by
``bash scripts/demo.sh --deployment``. Everything runs on loopback ports in a throw-away
``AIRFLOW_HOME`` with a SQLite metadata DB, beside the Cometly simulator (in this process) and a
moto S3 server; connections come from ``AIRFLOW_CONN_*`` environment variables.

Each Airflow component runs in its own session (process group), so stopping a component by its PID
also stops what it forked (LocalExecutor workers, task processes, the trigger runner).
No pytest imports here: the demo uses this module too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO / "example_dags"
TEST_DAGS = Path(__file__).resolve().parent / "dags"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The bucket the example export DAG writes to by default.
BUCKET = "cometly-lake"
#: The simulator's rate-limit "minute", scaled down so waits for a window to reopen stay short.
WINDOW_SECONDS = 6.0
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
_HEALTH_KEYS = {"scheduler": "scheduler", "triggerer": "triggerer", "dag-processor": "dag_processor"}


class DeploymentError(RuntimeError):
    """The deployment did not start, or a request to it failed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Deployment:
    """A running deployment and its client (REST API, DAGs folder, component processes)."""

    def __init__(self, home: Path, simulator: Any, s3_endpoint: str) -> None:
        self.home = home
        self.dags_folder = home / "dags"
        self.logs_dir = home / "logs"
        self.simulator = simulator
        self.s3_endpoint = s3_endpoint
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env = self._environment()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_handles: dict[str, Any] = {}
        self._http = requests.Session()
        self._token: str | None = None
        self._unpaused: set[str] = set()

    # --- environment --------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        # Start from this process's environment minus Airflow settings meant for in-process tests
        # (unit test mode, another home, another DAGs folder, connections monkeypatched by tests).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")) and k != "AIRFLOW_HOME"
        }
        sim = self.simulator
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                # 8 task processes at once: the mapped tracking scenario runs 8 instances in parallel.
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "16",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                # No Fernet key: trigger kwargs stay readable in the DB (see ``triggers()``).
                "AIRFLOW__CORE__FERNET_KEY": "",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                # Every component signs / checks the workers' Execution API tokens with this.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_dir / "tasks"),
                # The scheduler's and triggerer's log servers default to fixed ports (8793 / 8794).
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(
                    self.logs_dir / "dag-processor-files"
                ),
                # Eight task processes parsing their DAG file at once on two busy cores can take
                # longer than the 30 s default; the task is then rescheduled, not run.
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "150",
                "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "180",
                # Short loops so the suite is quick: the defaults are tuned for big installations.
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
                "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
                "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "20",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                # A killed triggerer's triggers go to a live one after this many seconds.
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "6",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "20",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "300",
                "AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD": "30",
                # The example DAGs' sensors poll every 2 s instead of every 30 s.
                "COMETLY_EXAMPLE_POLL_SECONDS": "2",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AIRFLOW_CONN_COMETLY_DEFAULT": json.dumps(
                    {
                        "conn_type": "cometly",
                        "host": sim.base_url,
                        "password": sim.api_key,
                        "extra": {
                            "rate_limit_window_seconds": WINDOW_SECONDS,
                            "retry_min_wait": 0.1,
                            "retry_max_wait": 2,
                        },
                    }
                ),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": "testing",
                        "password": "testing",
                        "extra": {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"},
                    }
                ),
            }
        )
        env.pop("AWS_PROFILE", None)
        return env

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 240) -> None:
        """Migrate the DB, start the four components and wait until they are healthy."""
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(EXAMPLE_DAGS, self.dags_folder, dirs_exist_ok=True, ignore=_ignore_caches)
        if TEST_DAGS.is_dir():
            shutil.copytree(TEST_DAGS, self.dags_folder, dirs_exist_ok=True, ignore=_ignore_caches)
        deadline = time.monotonic() + timeout
        self.airflow("db", "migrate", timeout=timeout)
        for component in COMPONENTS:
            self._spawn(component)
        self.wait_healthy(COMPONENTS, timeout=max(10.0, deadline - time.monotonic()))

    def _spawn(self, component: str) -> None:
        log = self._log_handles.get(component)
        if log is None:
            log = self._log_handles[component] = (self.logs_dir / f"{component}.log").open("ab")
        log.write(f"\n===== starting {component} at {time.strftime('%H:%M:%S')} =====\n".encode())
        log.flush()
        args = [component, "--port", str(self.api_port)] if component == "api-server" else [component]
        self._processes[component] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            cwd=self.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its workers too
        )

    def component_pids(self) -> dict[str, int]:
        """PID of each component's main process (the leader of its process group)."""
        return {name: process.pid for name, process in self._processes.items()}

    def process_tree(self, component: str) -> list[int]:
        """PIDs of the component and every process it forked (workers, task processes)."""
        import psutil

        root = psutil.Process(self._processes[component].pid)
        with contextlib.suppress(psutil.Error):
            return [root.pid, *(child.pid for child in root.children(recursive=True))]
        return []

    def stop_component(self, component: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal the component's process group; SIGKILL whatever is left after ``timeout``.

        Returns the main process's exit code (negative: the signal that ended it).
        """
        members = self._signal(component, sig)
        return self._reap(component, members, timeout)

    def _signal(self, component: str, sig: int) -> list[int]:
        process = self._processes.get(component)
        if process is None:
            return []
        # The group's members found before signalling: workers can outlive the group leader.
        members = self.process_tree(component) if process.poll() is None else []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        return members

    def _reap(self, component: str, members: list[int], timeout: float) -> int | None:
        process = self._processes.get(component)
        if process is None:
            return None
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        _kill_leftovers(members, timeout)
        return process.returncode

    def restart(self, component: str, signal: int = signal.SIGTERM, timeout: float = 120) -> int | None:
        """Stop ``component`` with ``signal`` (e.g. ``signal.SIGKILL``), start it again, wait for health.

        Returns the stopped process's exit code.
        """
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
        code = self.stop_component(component, signal)
        started = time.time()
        self._spawn(component)
        self.wait_healthy([component], timeout=timeout, since=started)
        return code

    def stop(self) -> None:
        """Stop every component by PID: SIGTERM to all at once, SIGKILL to what is left after 30 s."""
        members: dict[str, list[int]] = {}
        for component in ("scheduler", "triggerer", "dag-processor", "api-server"):
            try:
                members[component] = self._signal(component, signal.SIGTERM)
            except Exception as err:  # keep stopping the others
                print(f"stopping {component} failed: {err}", file=sys.stderr)
        for component, pids in members.items():
            try:
                self._reap(component, pids, timeout=30)
            except Exception as err:
                print(f"stopping {component} failed: {err}", file=sys.stderr)
        for handle in self._log_handles.values():
            handle.close()
        self._http.close()

    def wait_healthy(self, components: Sequence[str], timeout: float = 120, since: float = 0.0) -> None:
        """Wait until the API answers and each named component reports a heartbeat after ``since``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if name in components and process.poll() is not None:
                    raise DeploymentError(
                        f"{name} exited with code {process.returncode} while starting:\n"
                        + self.log_tail(name)
                    )
            try:
                last = self._http.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
            except (requests.RequestException, ValueError) as err:
                last = err
            else:
                if all(_healthy(last, name, since) for name in components):
                    return
            time.sleep(0.5)
        raise DeploymentError(f"{', '.join(components)} not healthy after {timeout:.0f} s; last: {last}")

    # --- logs ---------------------------------------------------------------------------------------

    def log_tail(self, component: str, lines: int = 60) -> str:
        path = self.logs_dir / f"{component}.log"
        if not path.exists():
            return "(no log)"
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 200_000))
            text = handle.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def task_log_files(self) -> list[Path]:
        """Task (and trigger) log files, most recently written last."""
        folder = self.logs_dir / "tasks"
        files = [p for p in folder.rglob("*.log*") if p.is_file()] if folder.exists() else []
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def trigger_log_path(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        triggerer_job_id: int,
        try_number: int = 1,
        map_index: int = -1,
    ) -> Path:
        """Where a triggerer job writes the log of a task try's trigger (one file per triggerer job)."""
        folder = self.logs_dir / "tasks" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder /= f"map_index={map_index}"
        return folder / f"attempt={try_number}.log.trigger.{triggerer_job_id}.log"

    # --- CLI ----------------------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 120) -> str:
        """Run ``airflow ARGS`` against this deployment; returns its output (raises on failure)."""
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with (self.logs_dir / "cli.log").open("a") as log:
            log.write(f"$ airflow {' '.join(args)}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise DeploymentError(
                f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
            )
        return result.stdout

    # --- REST API -----------------------------------------------------------------------------------

    def _auth(self) -> str:
        if self._token is None:
            # With simple_auth_manager_all_admins, GET /auth/token hands out an admin token.
            response = self._http.get(f"{self.api_url}/auth/token", timeout=30)
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, *, ok: Sequence[int] = (200,), **kwargs: Any) -> Any:
        """Call the public REST API (``/api/v2`` + ``path``); returns the JSON body."""
        url = f"{self.api_url}/api/v2{path}"
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._auth()}"}
            response = self._http.request(method, url, headers=headers, timeout=60, **kwargs)
            if response.status_code == 401 and attempt == 1:
                self._token = None  # expired: fetch a new one once
                continue
            break
        if response.status_code not in ok:
            raise DeploymentError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.api("GET", f"/dags/{dag_id}"))
        except DeploymentError as err:
            if " -> 404:" in str(err):
                return None
            raise

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/importErrors", params={"limit": 1000})["import_errors"])

    def wait_for_dags(self, dag_ids: Sequence[str], timeout: float = 120) -> None:
        """Wait until the dag-processor has serialized each DAG (so it can be triggered)."""
        deadline = time.monotonic() + timeout
        missing = list(dag_ids)
        while time.monotonic() < deadline:
            missing = [d for d in dag_ids if not self._parsed(d)]
            if not missing:
                return
            time.sleep(0.5)
        raise DeploymentError(f"DAGs not parsed after {timeout:.0f} s: {missing}; {self.import_errors()}")

    def _parsed(self, dag_id: str) -> bool:
        dag = self.dag(dag_id)
        return bool(dag and dag.get("last_parsed_time") and not dag.get("is_stale"))

    def add_dag(self, source_path_or_text: str | Path, name: str, timeout: float = 90) -> None:
        """Copy a DAG file into the DAGs folder; wait until it is parsed (raise on import errors)."""
        if not name.endswith(".py"):
            name += ".py"
        source = source_path_or_text
        if isinstance(source, Path) or ("\n" not in source and Path(source).is_file()):
            text = Path(source).read_text()
        else:
            text = str(source)
        target = self.dags_folder / name
        written = time.time()
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(target)  # the dag-processor never sees half a file
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for error in self.import_errors():
                if str(error.get("filename", "")).endswith(name) and _after(error.get("timestamp"), written):
                    raise DeploymentError(f"{name} failed to import:\n{error.get('stack_trace')}")
            dags = self.api("GET", "/dags", params={"limit": 1000})["dags"]
            parsed = [
                d
                for d in dags
                if str(d.get("fileloc", "")).endswith(name) and _after(d.get("last_parsed_time"), written)
            ]
            if parsed:
                return
            time.sleep(0.5)
        raise DeploymentError(f"{name} was not parsed within {timeout:.0f} s")

    def unpause(self, dag_id: str) -> None:
        if dag_id not in self._unpaused:
            self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
            self._unpaused.add(dag_id)

    def trigger(
        self, dag_id: str, conf: Mapping[str, Any] | None = None, logical_date: str | None = None
    ) -> str:
        """Trigger a run through the REST API (unpausing the DAG first); returns its run_id."""
        self.wait_for_dags([dag_id])
        self.unpause(dag_id)
        body = {"logical_date": logical_date, "conf": dict(conf or {})}
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)
        return str(run["dag_run_id"])

    def backfill(self, dag_id: str, from_date: str, to_date: str, timeout: float = 90) -> dict[str, Any]:
        """Create a backfill (``POST /backfills``, what ``airflow backfill create`` does).

        On SQLite, Airflow refuses it with a 503 while another component holds the DB lock
        ("Backfill creation is not supported on SQLite under concurrent access"); the refusal
        changes nothing, so it is retried until the lock is free.
        """
        body = {"dag_id": dag_id, "from_date": from_date, "to_date": to_date, "max_active_runs": 1}
        deadline = time.monotonic() + timeout
        while True:
            try:
                return dict(self.api("POST", "/backfills", json=body))
            except DeploymentError as err:
                if "-> 503:" not in str(err) or "locked" not in str(err) or time.monotonic() > deadline:
                    raise
            time.sleep(1)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 1000})["dag_runs"])

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 120,
        states: Sequence[str] = tuple(TERMINAL_RUN_STATES),
    ) -> str:
        """Wait until the run reaches one of ``states`` (default: success or failed); return its state."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.run(dag_id, run_id)["state"]
            if state in states:
                return str(state)
            time.sleep(0.5)
        raise DeploymentError(
            f"run {dag_id}/{run_id} still {state} after {timeout:.0f} s; tasks: "
            + ", ".join(
                f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in self.task_instances(dag_id, run_id)
            )
        )

    def wait_for_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Sequence[str],
        map_index: int = -1,
        timeout: float = 120,
    ) -> dict[str, Any]:
        """Wait until a task instance is in one of ``states``; returns it."""
        deadline = time.monotonic() + timeout
        ti: dict[str, Any] = {}
        while time.monotonic() < deadline:
            ti = self.task_instance(dag_id, run_id, task_id, map_index)
            if ti.get("state") in states:
                return ti
            time.sleep(0.2)
        raise DeploymentError(f"{dag_id}/{run_id}/{task_id} still {ti.get('state')} after {timeout:.0f} s")

    def wait_for_deferral(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, timeout: float = 120
    ) -> dict[str, Any]:
        """Wait until the task is deferred, a triggerer runs its trigger, and the scheduler is settled.

        Settled: the scheduler has processed the executor's report of the deferring try. If the
        trigger fires before that, Airflow 3.3 can take that stale report for a state mismatch and
        fail the resumed try (apache/airflow#72716); tests that hold the trigger (e.g. with a
        status fault) until this returns are immune to that race. Returns the task instance, with
        its ``trigger`` (id, classpath, created_date, triggerer_id) and ``triggerer_job``.
        """
        deadline = time.monotonic() + timeout
        ti: dict[str, Any] = {}
        while time.monotonic() < deadline:
            ti = self.task_instance(dag_id, run_id, task_id, map_index)
            if ti.get("state") == "deferred" and (ti.get("trigger") or {}).get("triggerer_id"):
                break
            if ti.get("state") in ("success", "failed", "skipped", "upstream_failed"):
                deadline = 0
            time.sleep(0.2)
        else:
            deadline = 0
        if not deadline:
            raise DeploymentError(
                f"{dag_id}/{run_id}/{task_id} not running in a triggerer (state {ti.get('state')}, "
                f"trigger {ti.get('trigger')})"
            )
        mark = f"ti_id={ti['id']}"
        while time.monotonic() < deadline:
            if any(
                "TaskInstance Finished" in line and mark in line and "state=deferred" in line
                for line in self.log_tail("scheduler", lines=3000).splitlines()
            ):
                return ti
            time.sleep(0.5)
        raise DeploymentError(f"the scheduler never processed the deferral of {dag_id}/{run_id}/{task_id}")

    def clear_run(self, dag_id: str, run_id: str, task_ids: Sequence[str] | None = None) -> None:
        """Clear the whole run (REST ``.../clear``), or only ``task_ids``, so the scheduler re-runs them."""
        if task_ids is None:
            self.api("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False})
            return
        self.api(
            "POST",
            f"/dags/{dag_id}/clearTaskInstances",
            json={
                "dag_run_id": run_id,
                "task_ids": list(task_ids),
                "dry_run": False,
                "only_failed": False,
                "reset_dag_runs": True,
            },
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones one per map_index), as the REST API gives them."""
        data = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return sorted(data["task_instances"], key=lambda t: (t["task_id"], t["map_index"]))

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        return dict(self.api("GET", path if map_index < 0 else f"{path}/{map_index}"))

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """The task instance's tries (task instance history plus the current try)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        path += "/tries" if map_index < 0 else f"/{map_index}/tries"
        return list(self.api("GET", path)["task_instances"])

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.api("GET", path, params={"map_index": map_index})["value"]

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The task try's log as text (through the API, like the UI shows it; trigger logs included)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        data = self.api("GET", path, params={"map_index": map_index, "full_content": True})
        content = data.get("content")
        if isinstance(content, list):
            return "\n".join(json.dumps(line) if not isinstance(line, str) else line for line in content)
        return str(content)

    def set_connection(
        self,
        conn_id: str,
        conn_type: str,
        host: str | None = None,
        password: str | None = None,
        extra: Mapping[str, Any] | str | None = None,
    ) -> None:
        """Create or replace a connection in the metadata DB (REST API).

        Connections from ``AIRFLOW_CONN_*`` variables (``cometly_default``, ``aws_default``) win over
        the DB, as in any deployment: use another conn_id.
        """
        body = {
            "connection_id": conn_id,
            "conn_type": conn_type,
            "host": host,
            "password": password,
            "extra": extra if isinstance(extra, str) or extra is None else json.dumps(dict(extra)),
        }
        self.api("DELETE", f"/connections/{conn_id}", ok=(204, 404))
        self.api("POST", "/connections", json=body, ok=(201,))

    def variables(self) -> dict[str, Any]:
        data = self.api("GET", "/variables", params={"limit": 1000})
        return {v["key"]: v["value"] for v in data["variables"]}

    def triggers(self) -> dict[int, dict[str, Any]]:
        """The trigger table (id -> classpath, kwargs, created_date, triggerer_id), kwargs decoded.

        The REST API hides trigger kwargs; the deployment runs without a Fernet key, so the table
        holds them as Airflow serialized them and the triggerer reads them back.
        """
        with contextlib.closing(self.db()) as db:
            rows = db.execute(
                "SELECT id, classpath, kwargs, created_date, triggerer_id FROM trigger"
            ).fetchall()
        return {
            row[0]: {
                "classpath": row[1],
                "kwargs": _unwrap(json.loads(row[2])),
                "created_date": row[3],
                "triggerer_id": row[4],
            }
            for row in rows
        }

    def task_process(self, ti_id: str) -> int | None:
        """PID of the process running a task instance's code (not its supervisor), if running.

        The Task SDK titles it ``airflow worker -- <task instance id>``.
        """
        import psutil

        for pid in self.process_tree("scheduler"):
            with contextlib.suppress(psutil.Error):
                if f"airflow worker -- {ti_id}" in " ".join(psutil.Process(pid).cmdline()):
                    return pid
        return None

    def db(self) -> sqlite3.Connection:
        """A read-only connection to the metadata DB (for what the REST API does not show)."""
        return sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=30)


def _healthy(health: Mapping[str, Any], component: str, since: float) -> bool:
    if health.get("metadatabase", {}).get("status") != "healthy":
        return False
    key = _HEALTH_KEYS.get(component)
    if key is None:  # the api-server answered, so it is up
        return True
    info = health.get(key) or {}
    if info.get("status") != "healthy":
        return False
    return _after(info.get("latest_heartbeat") or info.get(f"latest_{key}_heartbeat"), since)


def _after(timestamp: Any, since: float) -> bool:
    """Whether an ISO timestamp from the API is at or after epoch ``since`` (1 s of clock slack)."""
    if not since:
        return True
    if not timestamp:
        return False
    from datetime import datetime

    return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp() >= since - 1


def _unwrap(value: Any) -> Any:
    """Airflow's serialized form (``{"__type": ..., "__var": ...}``) back to plain JSON values."""
    if isinstance(value, dict):
        if "__var" in value:
            return _unwrap(value["__var"])
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _ignore_caches(_: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def _kill_leftovers(pids: Sequence[int], timeout: float) -> None:
    """SIGKILL processes of a stopped group that are still alive (e.g. ones that left the group)."""
    import psutil

    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            alive.append(psutil.Process(pid))
    _, still = psutil.wait_procs(alive, timeout=min(timeout, 5))
    for process in still:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(still, timeout=10)


@contextlib.contextmanager
def moto_s3(bucket: str = BUCKET) -> Iterator[str]:
    """A moto S3 server on a free loopback port with ``bucket`` created; yields its endpoint."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


@contextlib.contextmanager
def running_deployment(home: Path | None = None, **simulator_options: Any) -> Iterator[Deployment]:
    """Start the simulator, moto and the four Airflow components; stop them all on exit."""
    from cometly_provider.testing.simulator import run_simulator

    home = home or Path(tempfile.mkdtemp(prefix="cometly-deployment-"))
    options = {"window_seconds": WINDOW_SECONDS, **simulator_options}
    with run_simulator(**options) as simulator, moto_s3() as s3_endpoint:
        deployment = Deployment(home, simulator, s3_endpoint)
        try:
            deployment.start()
            yield deployment
        finally:
            deployment.stop()
