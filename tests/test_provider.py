"""The package as Airflow sees it once installed: provider metadata, connection type, CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

from cometly_provider.get_provider_info import get_provider_info
from cometly_provider.hooks.cometly import CometlyHook


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
    assert "cometly" in manager.connection_form_widgets or "cometly" in manager.field_behaviours
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook = ProvidersManagerTaskRuntime().hooks["cometly"]
    assert hook is not None
    assert hook.hook_class_name == "cometly_provider.hooks.cometly.CometlyHook"
    assert hook.connection_id_attribute_name == "cometly_conn_id"


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
