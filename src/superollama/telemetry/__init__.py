"""Telemetry: Prometheus metrics, access logs, OpenTelemetry traces (GenAI conventions), Opik, the usage
ledger, and incidents (log lines and a webhook).

Everything reads one ``RequestRecord`` per finished request, handed to ``Telemetry.record`` after the
request: metrics are counted in place, the rest is queued and written off the event loop (a telemetry
thread for logs, spans and Opik; an asyncio task for the ledger). Importing this package is light: the
OpenTelemetry and Opik SDKs are imported only when they are switched on.
"""

from superollama.telemetry._prom import Counter, Gauge
from superollama.telemetry.access_log import ACCESS_LOGGER, AccessLog, LoggingHandle, configure_logging
from superollama.telemetry.events import INCIDENT_ACTIONS, Incidents, is_incident
from superollama.telemetry.hub import Telemetry
from superollama.telemetry.metrics import Metrics
from superollama.telemetry.usage import GROUPINGS, UsageLedger, UsageStore, UsageSummary, summarize

__all__ = [
    "ACCESS_LOGGER",
    "GROUPINGS",
    "INCIDENT_ACTIONS",
    "AccessLog",
    "Counter",
    "Gauge",
    "Incidents",
    "LoggingHandle",
    "Metrics",
    "Telemetry",
    "UsageLedger",
    "UsageStore",
    "UsageSummary",
    "configure_logging",
    "is_incident",
    "summarize",
]
