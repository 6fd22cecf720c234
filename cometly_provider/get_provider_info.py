"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from cometly_provider import __version__
from cometly_provider.hooks.connection_fields import (
    provider_info_conn_fields,
    provider_info_field_behaviour,
)

INTEGRATION = "Cometly"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-cometly",
        "name": "Cometly",
        "description": "`Cometly <https://www.cometly.com/>`__ marketing attribution: "
        "conversion tracking, event and contacts exports.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://docs.cometly.com/",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["cometly_provider.hooks.cometly"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "cometly_provider.operators.track_event",
                    "cometly_provider.operators.export",
                    "cometly_provider.operators.event_export",
                    "cometly_provider.operators.contact_export",
                    "cometly_provider.operators.download_export",
                ],
            }
        ],
        "sensors": [
            {"integration-name": INTEGRATION, "python-modules": ["cometly_provider.sensors.event_export"]}
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["cometly_provider.triggers.event_export"]}
        ],
        "connection-types": [
            {
                "connection-type": "cometly",
                "hook-class-name": "cometly_provider.hooks.cometly.CometlyHook",
                "hook-name": "Cometly",
                "ui-field-behaviour": provider_info_field_behaviour(),
                "conn-fields": provider_info_conn_fields(),
            }
        ],
    }
