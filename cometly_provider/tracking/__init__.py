"""The tracking engine behind ``TrackEventOperator``: keys, sources, the concurrent sender, the failure sink.

* :mod:`.keys`: idempotency keys from the canonical event and the run scope;
* :mod:`.sources`: lists, single events and NDJSON files as rows;
* :mod:`.sender`: the rate-limited, multi-threaded sender;
* :mod:`.failures`: where failed events go (``failed_events_path`` or the XCom result);
* :mod:`.batch`: one batch from validation to the summary, configured by values.

Nothing here imports the operators.
"""

from __future__ import annotations

from cometly_provider.tracking.batch import TrackingBatch, TrackingSettings, check_settings
from cometly_provider.tracking.keys import KeyScope, canonical_event, derive_idempotency_key
from cometly_provider.tracking.sender import SenderSettings

__all__ = [
    "KeyScope",
    "SenderSettings",
    "TrackingBatch",
    "TrackingSettings",
    "canonical_event",
    "check_settings",
    "derive_idempotency_key",
]
