"""Readable OpenAPI operation ids (``listIncidents``, ``ackAlert``, …), one explicit name per operation.

Why: clients generated from ``/schema/openapi.json`` name their functions after the operation ids, and
Litestar's default derives them from the path (``ApiV1AlertsAlertIdAck``). The names live in one table
rather than in each decorator so they read as one vocabulary and stay unique; a test checks that every
published operation has its entry here, so a new endpoint gets a name when it is added.
"""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler
from litestar.types import Method
from litestar.types.internal_types import PathParameterDefinition

__all__ = ("OPERATION_IDS", "operation_id")

#: ``(METHOD, path with {parameter} names)`` -> operation id.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("GET", "/health"): "getHealth",
    ("GET", "/health/live"): "getLiveness",
    ("GET", "/health/ready"): "getReadiness",
    ("GET", "/metrics"): "getPrometheusMetrics",
    # people and keys
    ("POST", "/api/v1/auth/login"): "login",
    ("POST", "/api/v1/auth/logout"): "logout",
    ("GET", "/api/v1/auth/me"): "getMe",
    ("GET", "/api/v1/users"): "listUsers",
    ("POST", "/api/v1/users"): "putUser",
    ("DELETE", "/api/v1/users/{user_id}"): "removeUser",
    ("GET", "/api/v1/keys"): "listKeys",
    ("POST", "/api/v1/keys"): "createKey",
    ("DELETE", "/api/v1/keys/{key_id}"): "revokeKey",
    # ingest
    ("POST", "/api/v1/ingest/logs"): "ingestLogs",
    ("POST", "/api/v1/ingest/traces"): "ingestTraces",
    ("POST", "/api/v1/ingest/metrics"): "ingestMetrics",
    ("POST", "/v1/logs"): "exportOtlpLogs",
    ("POST", "/v1/traces"): "exportOtlpTraces",
    ("POST", "/v1/metrics"): "exportOtlpMetrics",
    # signals
    ("GET", "/api/v1/logs"): "listLogs",
    ("GET", "/api/v1/spans"): "listSpans",
    ("GET", "/api/v1/traces/{trace_id}"): "getTrace",
    ("GET", "/api/v1/metrics/series"): "getMetricSeries",
    ("GET", "/api/v1/services"): "listServices",
    # incidents
    ("GET", "/api/v1/incidents"): "listIncidents",
    ("GET", "/api/v1/incidents/{incident_id}"): "getIncident",
    ("POST", "/api/v1/incidents/{incident_id}/ack"): "ackIncident",
    ("POST", "/api/v1/incidents/{incident_id}/resolve"): "resolveIncident",
    ("POST", "/api/v1/incidents/{incident_id}/detach"): "detachIncident",
    # problems
    ("GET", "/api/v1/problems"): "listProblems",
    ("GET", "/api/v1/problems/{problem_id}"): "getProblem",
    ("POST", "/api/v1/problems/{problem_id}/merge"): "mergeProblems",
    ("GET", "/api/v1/anomalies"): "listAnomalies",
    # alerts
    ("GET", "/api/v1/alerts/active"): "listActiveAlerts",
    ("GET", "/api/v1/alerts/history"): "listAlertHistory",
    ("GET", "/api/v1/alerts/{alert_id}"): "getAlert",
    ("POST", "/api/v1/alerts/{alert_id}/ack"): "ackAlert",
    ("POST", "/api/v1/alerts/{alert_id}/unack"): "unackAlert",
    ("POST", "/api/v1/alerts/evaluate"): "evaluateAlerts",
    ("GET", "/api/v1/alerts/audit"): "listAudit",
    ("GET", "/api/v1/alerts/policies"): "listPolicies",
    ("POST", "/api/v1/alerts/policies"): "createPolicy",
    ("GET", "/api/v1/alerts/policies/{policy_id}"): "getPolicy",
    ("PATCH", "/api/v1/alerts/policies/{policy_id}"): "updatePolicy",
    ("DELETE", "/api/v1/alerts/policies/{policy_id}"): "deletePolicy",
    ("GET", "/api/v1/alerts/silences"): "listSilences",
    ("POST", "/api/v1/alerts/silences"): "createSilence",
    ("POST", "/api/v1/alerts/silences/{silence_id}/expire"): "expireSilence",
    ("POST", "/api/v1/alerts/silences/preview"): "previewSilence",
    ("GET", "/api/v1/alerts/inhibit-rules"): "listInhibitRules",
    ("POST", "/api/v1/alerts/inhibit-rules"): "createInhibitRule",
    ("DELETE", "/api/v1/alerts/inhibit-rules/{rule_id}"): "deleteInhibitRule",
    # notifications
    ("GET", "/api/v1/notifications/channels"): "listChannels",
    ("POST", "/api/v1/notifications/channels"): "createChannel",
    ("GET", "/api/v1/notifications/channels/{channel_id}"): "getChannel",
    ("PATCH", "/api/v1/notifications/channels/{channel_id}"): "updateChannel",
    ("DELETE", "/api/v1/notifications/channels/{channel_id}"): "deleteChannel",
    ("POST", "/api/v1/notifications/channels/{channel_id}/test"): "testChannel",
    ("GET", "/api/v1/notifications/escalations"): "listEscalations",
    ("POST", "/api/v1/notifications/escalations"): "createEscalation",
    ("GET", "/api/v1/notifications/escalations/{escalation_id}"): "getEscalation",
    ("PATCH", "/api/v1/notifications/escalations/{escalation_id}"): "updateEscalation",
    ("DELETE", "/api/v1/notifications/escalations/{escalation_id}"): "deleteEscalation",
    ("GET", "/api/v1/notifications/attempts"): "listDeliveryAttempts",
    ("GET", "/api/v1/notifications/attempts/{attempt_id}"): "getDeliveryAttempt",
    ("GET", "/api/v1/notifications/history"): "listNotificationHistory",
    ("GET", "/api/v1/notifications/outbox"): "listOutbox",
    ("GET", "/api/v1/notifications/outbox/{item_id}"): "getOutboxItem",
    ("POST", "/api/v1/notifications/outbox/{item_id}/replay"): "replayOutboxItem",
    ("POST", "/api/v1/notifications/outbox/replay-dead"): "replayDeadOutboxItems",
    ("POST", "/api/v1/notifications/dispatch"): "dispatchNotifications",
    ("GET", "/api/v1/notifications/stats"): "getNotificationStats",
    ("GET", "/api/v1/notifications/trends"): "getNotificationTrends",
    # events
    ("GET", "/api/v1/events/stream"): "streamEvents",
    # the SAQ monitor (litestar-saq)
    ("GET", "/saq/health"): "getSaqHealth",
    ("GET", "/saq/api/queues"): "listSaqQueues",
    ("GET", "/saq/api/queues/{queue_id}"): "getSaqQueue",
    ("GET", "/saq/api/queues/{queue_id}/jobs/{job_id}"): "getSaqJob",
    ("POST", "/saq/api/queues/{queue_id}/jobs/{job_id}/abort"): "abortSaqJob",
    ("POST", "/saq/api/queues/{queue_id}/jobs/{job_id}/retry"): "retrySaqJob",
    ("GET", "/saq/static/{file_path}"): "getSaqStaticFile",
    ("HEAD", "/saq/static/{file_path}"): "headSaqStaticFile",
}


def schema_path(path_components: list[str | PathParameterDefinition]) -> str:
    """The path as the schema shows it: ``/api/v1/alerts/{alert_id}``."""
    parts = ["{" + c.name + "}" if isinstance(c, PathParameterDefinition) else c for c in path_components]
    return "/" + "/".join(part.strip("/") for part in parts if part.strip("/"))


def operation_id(
    route_handler: HTTPRouteHandler, http_method: Method, path_components: list[str | PathParameterDefinition]
) -> str:
    """``OpenAPIConfig.operation_id_creator``: the table's name; else the handler's name, camelCased."""
    method = str(getattr(http_method, "value", http_method)).upper()  # an HttpMethod enum or a string
    found = OPERATION_IDS.get((method, schema_path(path_components)))
    if found is not None:
        return found
    first, *rest = route_handler.handler_name.strip("_").split("_")
    return first + "".join(word.title() for word in rest)
