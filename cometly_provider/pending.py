"""Which export a task instance's tries are waiting for, so that a retry re-attaches to it.

Airflow 3 deletes every XCom of a task instance when a new try starts, so XCom cannot tell a retry
what the failed try created. Airflow 3.3 has a store for exactly this: ``task_state_store`` in the
task context, scoped to the task instance (dag, run, task, map index), kept across tries (the same
mechanism ``airflow.sdk.bases.resumablejobmixin.ResumableJobMixin`` uses). On older 3.x releases an
Airflow Variable named ``cometly_pending_export__<digest of dag_id, run_id, task_id, map_index>``
stands in for it.

Either way the record is removed once the task instance is done with it, whatever ended the try:
success, an export that failed, or the last try failing (including ``execution_timeout``, a
deferral timeout and a failed trigger, which end the try outside ``execute``). Only a worker killed
on its last try leaves one behind; the task state store's retention (``[state_store]
default_retention_days``) then removes it, and a later clear of that task instance reuses or
overwrites it. Reading or writing is best effort: if it fails, the worst case is one more export.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSensorTimeout, Variable

from cometly_provider.exceptions import CometlyExportFailedError

if TYPE_CHECKING:
    from cometly_provider.exports import ExportRef, LogLike

#: Variables remembering an in-flight export (Airflow < 3.3) are named with this prefix.
PENDING_EXPORT_VARIABLE_PREFIX = "cometly_pending_export__"
#: Key in the task state store (Airflow >= 3.3).
PENDING_EXPORT_STATE_KEY = "cometly_pending_export"


def fingerprint(space: str, kind: str, body: Mapping[str, Any]) -> str:
    """What makes two creations the same request: Space, kind and body."""
    return hashlib.sha256(json.dumps([space, kind, body], sort_keys=True).encode()).hexdigest()


class PendingExport:
    """The record of the export this task instance's tries wait for (task state store or Variable)."""

    def __init__(self, context: Mapping[str, Any], fingerprint: str | None, log: LogLike) -> None:
        self.ti = context["ti"]
        self.fingerprint = fingerprint
        self.log = log
        self.store = context.get("task_state_store")
        ident = json.dumps([self.ti.dag_id, self.ti.run_id, self.ti.task_id, self.ti.map_index])
        # Digest: Variable keys are at most 250 characters, dag and run ids can be longer.
        self.variable = PENDING_EXPORT_VARIABLE_PREFIX + hashlib.sha256(ident.encode()).hexdigest()[:40]

    @property
    def where(self) -> str:
        return "the task state store" if self.store is not None else f"Variable {self.variable}"

    def load(self) -> dict[str, Any] | None:
        try:
            raw = (
                self.store.get(PENDING_EXPORT_STATE_KEY)
                if self.store is not None
                else Variable.get(self.variable, default=None)
            )
        except Exception as err:  # best effort: at worst one more export is created
            self.log.warning("Cannot read %s (%s); creating a new export", self.where, err)
            return None
        try:
            record = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint:
            return None  # another request (edited DAG, other Space): not the same export
        if not isinstance(record.get("export_id"), int):
            return None
        return record

    def save(self, ref: ExportRef) -> None:
        record = {
            "export_id": ref.export_id,
            "kind": ref.kind.name,
            "fingerprint": self.fingerprint,
            "try_number": self.ti.try_number,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        try:
            if self.store is not None:
                self.store.set(PENDING_EXPORT_STATE_KEY, record)
            else:
                ident = {k: getattr(self.ti, k) for k in ("dag_id", "run_id", "task_id", "map_index")}
                Variable.set(
                    self.variable,
                    json.dumps({**record, **ident}),
                    description="Cometly export in flight for a create-export task instance; reused by "
                    "its retries, deleted when the task ends",
                )
        except Exception as err:
            self.log.warning("Cannot record %s in %s (%s)", ref.label, self.where, err)

    def clear(self) -> None:
        try:
            if self.store is not None:
                self.store.delete(PENDING_EXPORT_STATE_KEY)
            else:
                Variable.delete(self.variable)
        except Exception as err:
            self.log.warning("Cannot delete the pending export from %s (%s)", self.where, err)

    def after_failure(self, err: BaseException) -> None:
        """Forget the export unless a retry of this task instance may still reuse it."""
        # A 404 is left to the retry's own check: it may be a blip, and a gone export is detected there.
        final = isinstance(err, AirflowFailException | AirflowSensorTimeout) or not retries_left(self.ti)
        if isinstance(err, CometlyExportFailedError) or final:
            self.clear()


def retries_left(ti: Any) -> bool:
    max_tries, try_number = getattr(ti, "max_tries", 0), getattr(ti, "try_number", 1)
    return isinstance(max_tries, int) and max_tries != 0 and try_number <= max_tries
