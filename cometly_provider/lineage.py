"""OpenLineage for the export path: the Cometly Space's events in, the S3/GCS/file object out.

Only imported from the operators' ``get_openlineage_facets_on_complete``, which the OpenLineage
provider calls when it is installed; nothing here is imported otherwise, so the provider stays
optional (``pip install 'airflow-provider-cometly[openlineage]'``).

Dataset naming follows the OpenLineage naming spec: ``s3://bucket`` / ``gs://bucket`` namespaces
with the key as the name, ``file`` with the absolute path. The Cometly side is the Space's event
data: namespace ``cometly://<API host>``, name ``space-<id>/events``, where the id is the digest the
rate limiter already uses for the Space (a hash of host and key, never the key itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cometly_provider.utils.locations import parse_location

if TYPE_CHECKING:
    from cometly_provider.hooks.cometly import CometlyHook

SPACE_ID_LENGTH = 16


def cometly_events_dataset(hook: CometlyHook, kind: str = "events") -> Any:
    """The Space's Cometly data of an export kind (``events``, ``contacts``), which an export reads."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    return Dataset(
        namespace=f"cometly://{urlsplit(hook.host).netloc}",
        name=f"space-{hook.space[:SPACE_ID_LENGTH]}/{kind}",
    )


def location_dataset(uri: str) -> Any:
    """An ``s3://``, ``gs://`` or ``file://`` object as an OpenLineage dataset."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    location = parse_location(uri, field="destination")
    if location.scheme == "file":
        return Dataset(namespace="file", name=location.key)
    return Dataset(namespace=f"{location.scheme}://{location.bucket}", name=location.key)


def export_lineage(hook: CometlyHook, destination: str | None = None, *, kind: str = "events") -> Any:
    """``OperatorLineage`` for an export task: the kind's Cometly data in, ``destination`` (if any) out."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    outputs = [location_dataset(destination)] if destination else []
    return OperatorLineage(inputs=[cometly_events_dataset(hook, kind)], outputs=outputs)
