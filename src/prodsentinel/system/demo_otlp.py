"""``prodsentinel demo --otlp``: the demo's fake services instrumented with the real OpenTelemetry SDK.

Each service gets its own tracer, logger and meter provider (resource ``service.name``) exporting OTLP/HTTP
protobuf to ProdSentinel's ``/v1/traces``, ``/v1/logs`` and ``/v1/metrics`` with the SDK's batch processors
and periodic metric reader, exactly as an instrumented service would (SPEC §11). The telemetry shapes come
from the same :class:`~prodsentinel.system.demo.TelemetryGenerator`: each generated span is replayed as an
SDK span with the generated times, status and attributes. Its ids come from the generator too, through the
SDK's own extension point for them (``IdGenerator``), so the logs that carry them stay correlated.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from prodsentinel.system.demo import SERVICES, DemoBatch

__all__ = ("OtlpDemoSender",)

_SEVERITY = {
    "DEBUG": SeverityNumber.DEBUG,
    "INFO": SeverityNumber.INFO,
    "WARN": SeverityNumber.WARN,
    "ERROR": SeverityNumber.ERROR,
    "CRITICAL": SeverityNumber.FATAL,
}


class _PresetIds(IdGenerator):
    """Hands out the ids the demo generator chose for the next span."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


def _nanos(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1_000_000) * 1000


class _Service:
    def __init__(self, name: str, url: str, headers: dict[str, str]) -> None:
        resource = Resource.create({"service.name": name, "deployment.environment": "demo"})
        self.ids = _PresetIds()
        self.tracer_provider = TracerProvider(resource=resource, id_generator=self.ids)
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=headers))
        )
        self.logger_provider = LoggerProvider(resource=resource)
        self.logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{url}/v1/logs", headers=headers))
        )
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{url}/v1/metrics", headers=headers), export_interval_millis=1000
        )
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        self.tracer = self.tracer_provider.get_tracer("prodsentinel.demo")
        self.logger = self.logger_provider.get_logger("prodsentinel.demo")
        self.meter = self.meter_provider.get_meter("prodsentinel.demo")
        self.gauges: dict[str, Any] = {}

    def shutdown(self) -> None:
        for provider in (self.tracer_provider, self.logger_provider, self.meter_provider):
            provider.shutdown()


class OtlpDemoSender:
    """Replays the demo's batches through the OpenTelemetry SDK (one set of providers per service)."""

    def __init__(self, url: str, api_key: str) -> None:
        headers = {"x-api-key": api_key}
        self._services = {name: _Service(name, url, headers) for name in SERVICES}

    def send(self, batch: DemoBatch) -> None:
        for span in batch.spans:
            self._span(span)
        for log in batch.logs:
            self._log(log)
        for point in batch.metrics:
            self._point(point)

    def shutdown(self) -> None:
        """Flush every exporter (the batch processors and the metric reader) and stop."""
        for service in self._services.values():
            service.shutdown()

    def _span(self, item: dict[str, Any]) -> None:
        service = self._services[item["service_name"]]
        trace_id = int(item["trace_id"], 16)
        service.ids.trace_id, service.ids.span_id = trace_id, int(item["span_id"], 16)
        context = None
        if item["parent_span_id"]:
            parent = SpanContext(trace_id, int(item["parent_span_id"], 16), True, TraceFlags(1))
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        kind = trace.SpanKind.SERVER if item["parent_span_id"] is None else trace.SpanKind.INTERNAL
        span = service.tracer.start_span(
            item["name"],
            context=context,
            kind=kind,
            attributes=item["attributes"],
            start_time=_nanos(item["start_time"]),
        )
        if item["status"] == "ERROR":
            span.set_status(Status(StatusCode.ERROR))
        else:
            span.set_status(Status(StatusCode.OK))
        span.end(end_time=_nanos(item["end_time"]))

    def _log(self, item: dict[str, Any]) -> None:
        service = self._services[item["service_name"]]
        span = SpanContext(int(item["trace_id"], 16), int(item["span_id"], 16), False, TraceFlags(1))
        service.logger.emit(
            timestamp=_nanos(item["timestamp"]),
            context=trace.set_span_in_context(NonRecordingSpan(span)),
            severity_number=_SEVERITY[item["level"]],
            severity_text=item["level"],
            body=item["message"],
            attributes=item["attributes"],
        )

    def _point(self, item: dict[str, Any]) -> None:
        service = self._services[item["service_name"]]
        gauge = service.gauges.get(item["name"])
        if gauge is None:
            gauge = service.gauges[item["name"]] = service.meter.create_gauge(item["name"])
        gauge.set(item["value"], item.get("labels") or {})
