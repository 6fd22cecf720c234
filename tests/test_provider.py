"""The package as Airflow sees it once installed: provider metadata, connection type, CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

from cometly_provider.get_provider_info import get_provider_info
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.hooks.connection_fields import EXTRA_FIELDS


def test_entry_point_points_at_get_provider_info() -> None:
    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("cometly")]
    assert ep.load() is get_provider_info


def test_every_declared_module_and_hook_class_imports() -> None:
    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[kind]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    (conn_type,) = info["connection-types"]
    module, _, name = conn_type["hook-class-name"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is CometlyHook
    assert conn_type["connection-type"] == CometlyHook.conn_type == "cometly"
    # The same behaviour in both places (provider metadata spells keys with hyphens).
    from_hook = {k.replace("_", "-"): v for k, v in CometlyHook.get_ui_field_behaviour().items()}
    assert conn_type["ui-field-behaviour"] == from_hook
    assert CometlyHook.get_ui_field_behaviour()["relabeling"]["password"] == "API key"


def test_providers_manager_registers_the_connection_type() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-cometly" in manager.providers
    try:  # Airflow 3.2+: hooks are resolved by the Task SDK's own manager
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

        hooks = ProvidersManagerTaskRuntime().hooks
    except ImportError:
        hooks = manager.hooks
    hook = hooks["cometly"]
    assert hook is not None
    assert hook.hook_class_name == "cometly_provider.hooks.cometly.CometlyHook"
    assert hook.connection_id_attribute_name == "cometly_conn_id"


def test_ui_form_metadata_lists_every_extra_field() -> None:
    """What the API server sends the connection form, on the installed Airflow line.

    Airflow 3.2+ builds it from conn-fields; 3.0/3.1 from get_connection_form_widgets (wtforms
    fields the API server patches into JSON schema). Both must show the same labelled fields.
    """
    # A fresh process, like the API server: the providers manager is a process-wide singleton and
    # on Airflow < 3.2 the form is only right if HookMetaService is the first to load the hooks.
    script = textwrap.dedent(
        """
        import json
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
        (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "cometly"]
        print("META " + meta.model_dump_json())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, env=os.environ.copy()
    ).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("META ")]
    meta = json.loads(line.removeprefix("META "))
    extra_fields = meta["extra_fields"] or {}
    assert list(extra_fields) == [f.name for f in EXTRA_FIELDS]
    for field in EXTRA_FIELDS:
        shown = extra_fields[field.name]
        assert shown["schema"]["title"] == field.label
        assert shown["description"] == field.description
    standard = meta["standard_fields"]
    assert standard["password"]["title"] == "API key"
    assert standard["port"]["hidden"] is False  # Test needs a stored port on Airflow 3.3
    assert standard["login"]["hidden"] is True
    types = {name: f["schema"]["type"] for name, f in extra_fields.items()}
    assert types["max_attempts"] == ["integer", "null"]
    assert types["rate_limiting"] == ["boolean", "null"]


def test_airflow_cli_lists_the_provider() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    (table,) = [line for line in listed.stdout.splitlines() if line.startswith("[{")]
    packages = {p["package_name"]: p for p in json.loads(table)}
    assert "airflow-provider-cometly" in packages
