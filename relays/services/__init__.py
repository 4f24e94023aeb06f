"""Writes to the relay registry, one subject per module:

- registry: register, change, drain, disable, enable, remove (each records its event);
- sweep: claim -> plan -> probe -> record, the pipeline the Celery task runs;
- pruning: history kept for a while, then let go;
- issuing: the best relays for a caller, with credentials.
"""

from .issuing import NO_RELAY_REASON, IceLimited, ice_issue_check, ice_servers_issue
from .measurements import (
    FAILURE_PROBLEMS,
    MAX_GATHER_REPORTS,
    MeasureLimited,
    ReportLimited,
    relay_failure_report,
    relay_gather_report,
    relay_rtt_observe,
)
from .pruning import relay_prune_history
from .registry import (
    relay_config_changed,
    relay_create,
    relay_disable,
    relay_drain,
    relay_enable,
    relay_event,
    relay_remove,
    relay_set_unsafe_override,
    relay_stage_next_secret,
    relay_update,
    relay_validate,
)
from .sweep import (
    PROBE_CREDENTIAL_TTL,
    SweepOutcome,
    probe_plan,
    relay_record_probes,
    relay_sweep,
    relays_claim,
    relays_probe,
)

__all__ = [
    "FAILURE_PROBLEMS",
    "MAX_GATHER_REPORTS",
    "MeasureLimited",
    "relay_gather_report",
    "ReportLimited",
    "relay_failure_report",
    "NO_RELAY_REASON",
    "IceLimited",
    "ice_issue_check",
    "PROBE_CREDENTIAL_TTL",
    "SweepOutcome",
    "ice_servers_issue",
    "probe_plan",
    "relay_config_changed",
    "relay_create",
    "relay_disable",
    "relay_drain",
    "relay_enable",
    "relay_event",
    "relay_prune_history",
    "relay_record_probes",
    "relay_remove",
    "relay_rtt_observe",
    "relay_set_unsafe_override",
    "relay_stage_next_secret",
    "relay_sweep",
    "relay_update",
    "relay_validate",
    "relays_claim",
    "relays_probe",
]
