"""Every operator, sensor and trigger of the package survives what Airflow does to task objects.

The classes are discovered by walking ``cometly_provider`` (the bundled simulator aside), so a new
class is covered the day it is added: it is built from the example arguments below (by class name,
else by parameter name), and the test asks for an entry if it cannot be.

* ``copy.deepcopy``: ``airflow dags test`` and ``dag.partial_subset()`` deep-copy tasks (a
  ``threading.Event`` made ``TrackEventOperator`` fail there: ``cannot pickle '_thread.lock'``);
* ``dag.partial_subset()``: clearing or testing a task and its neighbours;
* the SerializedDAG round trip the scheduler and API server read DAGs from; for triggers, their
  ``serialize()`` round trip, as the triggerer rebuilds them.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import inspect
import pkgutil
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG, BaseOperator
from airflow.triggers.base import BaseTrigger

import cometly_provider

#: Arguments by class name, for classes whose required arguments are not enough to build them.
BY_CLASS: dict[str, dict[str, Any]] = {
    "TrackEventOperator": {
        "events": [{"event_name": "purchase", "email": "a@example.com", "amount": 1}],
        "failed_events_path": "s3://ops/failed/{{ run_id }}.ndjson",
        "idempotency_fields": ["email"],
    },
}
#: Arguments by parameter name, for every other class.
BY_PARAMETER: dict[str, Any] = {
    "export_id": 123,
    "destination": "s3://lake/cometly/{{ ds }}.ndjson.gz",
    "download_url": "{{ ti.xcom_pull(task_ids='wait') }}",
    "date": "{{ ds }}",
    "end_time": 1_900_000_000.0,
    "start_date": "2024-01-15 00:00:00",
    "end_date": "2024-01-16 00:00:00",
}


def _package_classes(base: type) -> list[type]:
    found: dict[str, type] = {}
    for module_info in pkgutil.walk_packages(cometly_provider.__path__, "cometly_provider."):
        if module_info.name.startswith("cometly_provider.testing"):
            continue
        module = importlib.import_module(module_info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, base)
                and cls.__module__.startswith("cometly_provider.")
                and not inspect.isabstract(cls)
                and not cls.__name__.startswith("_")
            ):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found)]


OPERATORS = _package_classes(BaseOperator)
TRIGGERS = _package_classes(BaseTrigger)


def _arguments(cls: type) -> dict[str, Any]:
    if cls.__name__ in BY_CLASS:
        return dict(BY_CLASS[cls.__name__])
    kwargs: dict[str, Any] = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        if parameter.default is parameter.empty:
            if name not in BY_PARAMETER:
                pytest.fail(f"{cls.__name__} needs {name}=: add it to BY_CLASS or BY_PARAMETER")
            kwargs[name] = BY_PARAMETER[name]
    return kwargs


def test_discovery_finds_the_package_classes() -> None:
    names = {cls.__name__ for cls in OPERATORS} | {cls.__name__ for cls in TRIGGERS}
    assert {
        "TrackEventOperator",
        "CreateExportOperator",
        "CreateEventExportOperator",
        "CreateContactExportOperator",
        "ExportSensor",
        "DownloadExportOperator",
        "ExportTrigger",
    } <= names
    assert any(cls.__module__.startswith("cometly_provider.sensors.") for cls in OPERATORS)


def _dag_with(cls: type) -> tuple[DAG, BaseOperator]:
    with DAG(
        f"copy_{cls.__name__.lower()}", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")
    ) as dag:
        upstream = BaseOperator(task_id="upstream")
        task = cls(task_id="subject", **_arguments(cls))
        downstream = BaseOperator(task_id="downstream")
        upstream >> task >> downstream
    return dag, task


def _template_values(task: Any) -> dict[str, Any]:
    return {name: getattr(task, name) for name in task.template_fields}


@pytest.mark.parametrize("cls", OPERATORS, ids=lambda cls: cls.__name__)
def test_operator_survives_deepcopy_partial_subset_and_serialization(cls: type) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag, task = _dag_with(cls)

    copied = copy.deepcopy(task)
    assert type(copied) is cls
    assert _template_values(copied) == _template_values(task)

    subset = dag.partial_subset(task_ids=["subject"], include_upstream=True, include_downstream=False)
    assert set(subset.task_dict) == {"upstream", "subject"}
    assert _template_values(subset.task_dict["subject"]) == _template_values(task)

    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    again = restored.task_dict["subject"]
    assert again.task_type == cls.__name__
    for name, value in _template_values(task).items():
        assert getattr(again, name) == value, name


@pytest.mark.parametrize("cls", TRIGGERS, ids=lambda cls: cls.__name__)
def test_trigger_survives_deepcopy_and_its_serialize_round_trip(cls: type) -> None:
    trigger = cls(**_arguments(cls))
    classpath, kwargs = trigger.serialize()
    module_name, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module_name), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert copy.deepcopy(trigger).serialize() == (classpath, kwargs)


def test_track_operator_copies_after_it_ran_and_while_mapped() -> None:
    """The running batch (threads, an Event) lives only inside execute()."""
    from cometly_provider.operators.track_event import TrackEventOperator

    with DAG("copy_mapped_track", schedule=None, start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)) as dag:
        TrackEventOperator.partial(task_id="track", idempotency_fields=["email"]).expand(
            events=[[{"event_name": "purchase", "email": "a@example.com"}]]
        )
    copy.deepcopy(dag)
    dag.partial_subset(task_ids=["track"])
