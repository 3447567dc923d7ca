"""OTLP/HTTP bodies in and out (SPEC §11): protobuf with the official ``opentelemetry-proto`` classes,
OTLP/JSON with msgspec (``ingest.otlp_json``); answers and ``google.rpc.Status`` errors in the request's
content type.

The two :class:`~prodsentinel.ingest.otlp_mapping.Codec` s here are the only format-specific reading code:
ids (bytes vs hex text) and the ``oneof`` fields (``WhichOneof`` vs the one set optional field).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from prodsentinel.ingest import otlp_json
from prodsentinel.ingest.otlp_mapping import Codec
from prodsentinel.lib.errors import BadRequestError, UnsupportedMediaTypeError

__all__ = (
    "JSON",
    "JSON_CODEC",
    "LOGS",
    "MEDIA_TYPES",
    "METRICS",
    "PROTOBUF",
    "PROTOBUF_CODEC",
    "TRACES",
    "OtlpFormat",
    "Signal",
    "decode_request",
    "encode_response",
    "encode_status",
    "otlp_format",
)

OtlpFormat = Literal["protobuf", "json"]
PROTOBUF: OtlpFormat = "protobuf"
JSON: OtlpFormat = "json"
MEDIA_TYPES: dict[OtlpFormat, str] = {PROTOBUF: "application/x-protobuf", JSON: "application/json"}
_PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})


def otlp_format(content_type: str) -> OtlpFormat:
    """``application/x-protobuf`` or ``application/json`` (parameters ignored); anything else is a 415."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _PROTOBUF_TYPES:
        return PROTOBUF
    if media_type == "application/json":
        return JSON
    raise UnsupportedMediaTypeError(
        f"Unsupported Content-Type {content_type!r}: send application/x-protobuf or application/json."
    )


# ------------------------------------------------------------------------------------------- codecs
class _ProtobufCodec:
    @staticmethod
    def ident(value: bytes) -> str:
        return value.hex()

    def any_value(self, value: Any) -> Any:
        which = value.WhichOneof("value")
        if which == "string_value":  # the common case first
            return value.string_value
        if which is None:
            return None
        if which == "array_value":
            return [self.any_value(item) for item in value.array_value.values]
        if which == "kvlist_value":
            return {kv.key: self.any_value(kv.value) for kv in value.kvlist_value.values}
        if which == "bytes_value":
            return base64.b64encode(value.bytes_value).decode()
        return getattr(value, which)

    def attributes(self, key_values: Any) -> dict[str, Any]:
        # Hand-written for the hot path: string values, the common case, are read straight (an empty
        # one is told apart from an unset or other value by ``any_value``).
        any_value = self.any_value
        return {kv.key: value.string_value or any_value(value) for kv in key_values for value in (kv.value,)}

    def span_attributes(self, span: Any) -> dict[str, Any]:
        return self.attributes(span.attributes)

    @staticmethod
    def metric_data(metric: Any) -> tuple[str | None, Any]:
        which = metric.WhichOneof("data")
        return which, None if which is None else getattr(metric, which)

    @staticmethod
    def number(point: Any) -> float | None:
        which = point.WhichOneof("value")
        return None if which is None else float(getattr(point, which))

    @staticmethod
    def histogram_sum(point: Any) -> float | None:
        return point.sum if point.HasField("sum") else None


class _JsonCodec:
    @staticmethod
    def ident(value: str) -> str:
        """Hex in any case (OTLP/JSON), normalised to lowercase; whitespace inside is malformed."""
        if not value:
            return ""
        text = bytes.fromhex(value).hex()
        if len(text) != len(value):
            raise ValueError("whitespace in a hex id")
        return text

    def any_value(self, value: otlp_json.AnyValue) -> Any:
        if value.string_value is not None:
            return value.string_value
        if value.bool_value is not None:
            return value.bool_value
        if value.int_value is not None:
            return _int(value.int_value)
        if value.double_value is not None:
            return _float(value.double_value)
        if value.array_value is not None:
            return [self.any_value(item) for item in value.array_value.values]
        if value.kvlist_value is not None:
            return {kv.key: self.any_value(kv.value) for kv in value.kvlist_value.values}
        return value.bytes_value

    def attributes(self, key_values: Any) -> dict[str, Any]:
        any_value = self.any_value
        return {kv.key: any_value(kv.value) for kv in key_values}

    def span_attributes(self, span: Any) -> dict[str, Any]:
        return self.attributes(span.attributes)

    @staticmethod
    def metric_data(metric: otlp_json.Metric) -> tuple[str | None, Any]:
        for name in ("gauge", "sum", "histogram", "exponential_histogram", "summary"):
            data = getattr(metric, name)
            if data is not None:
                return name, data
        return None, None

    @staticmethod
    def number(point: otlp_json.NumberDataPoint) -> float | None:
        if point.as_double is not None:
            return _float(point.as_double)
        if point.as_int is not None:
            return float(_int(point.as_int))
        return None

    @staticmethod
    def histogram_sum(point: Any) -> float | None:
        return None if point.sum is None else _float(point.sum)


def _int(value: int | str) -> int:
    """A 64-bit integer sent as a JSON string; an unparseable one maps to the item's rejection."""
    return value if isinstance(value, int) else int(value)


def _float(value: float | str) -> float:
    return value if isinstance(value, float) else float(value)


#: Serialized ``KeyValue`` s (at most this long) and the ``(key, value)`` each reads as, shared by requests.
_KEY_VALUE_CACHE: dict[bytes, tuple[str, Any]] = {}
_CACHED_BYTES = 256
_CACHE_ENTRIES = 4096
_SCALARS = (str, bool, int, float)


class _ProtobufSpansCodec(_ProtobufCodec):
    """Reads :data:`_SpanAttributesAsBytes` requests, whose spans' attributes are the serialized
    ``KeyValue`` s.

    Why: reading a ``KeyValue`` through the protobuf classes (its wrapper, its key, its ``AnyValue``
    wrapper, the value) cost ~0.8 µs, most of what a span cost to map, while a service's spans repeat
    the same few attributes (``http.method=GET``, ``db.system=postgresql``): here each distinct short
    ``KeyValue`` is parsed once, by the official ``KeyValue`` class, and found again by its bytes.
    Only scalar values are kept (a list or map would be shared, mutable, between spans).
    """

    def span_attributes(self, span: Any) -> dict[str, Any]:
        cache = _KEY_VALUE_CACHE
        get = cache.get
        attributes = {}
        for raw in span.attributes:
            pair = get(raw)
            if pair is None:
                pair = self._key_value(raw)
            attributes[pair[0]] = pair[1]
        return attributes

    def _key_value(self, raw: bytes) -> tuple[str, Any]:
        key_value = _parse(common_pb2.KeyValue, raw, "ExportTraceServiceRequest")
        pair = (key_value.key, self.any_value(key_value.value))
        if len(raw) <= _CACHED_BYTES and (pair[1] is None or isinstance(pair[1], _SCALARS)):
            if len(_KEY_VALUE_CACHE) >= _CACHE_ENTRIES:
                _KEY_VALUE_CACHE.clear()
            _KEY_VALUE_CACHE[raw] = pair
        return pair


def _spans_attributes_as_bytes() -> type[Message]:
    """``ExportTraceServiceRequest`` from the official descriptors, in a pool of its own, with one change:
    ``Span.attributes`` is ``repeated bytes``, which reads the same wire bytes as ``repeated KeyValue``
    (both are length-delimited) without parsing them (see :class:`_ProtobufSpansCodec`)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        if module is trace_pb2:
            (span,) = [message for message in file.message_type if message.name == "Span"]
            (attributes,) = [field for field in span.field if field.name == "attributes"]
            attributes.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            attributes.ClearField("type_name")
        pool.Add(file)
    name = trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR.full_name
    request: type[Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    return request


_SpanAttributesAsBytes = _spans_attributes_as_bytes()
PROTOBUF_CODEC: Codec = _ProtobufCodec()
_PROTOBUF_SPANS_CODEC: Codec = _ProtobufSpansCodec()
JSON_CODEC: Codec = _JsonCodec()


# ------------------------------------------------------------------------------------------ signals
@dataclass(frozen=True)
class Signal:
    """One OTLP endpoint: its request/response classes in both formats and the partial-success field."""

    name: str  # "traces" | "logs" | "metrics"
    request: type[Message]
    response: type[Message]
    partial_success: type[Message]
    rejected_field: str  # rejected_spans | rejected_log_records | rejected_data_points
    json_request: type[msgspec.Struct]
    json_decoder: msgspec.json.Decoder[Any]


def _signal(name: str, module: Any, prefix: str, rejected: str, json_type: type[msgspec.Struct]) -> Signal:
    return Signal(
        name=name,
        request=getattr(module, f"Export{prefix}ServiceRequest"),
        response=getattr(module, f"Export{prefix}ServiceResponse"),
        partial_success=getattr(module, f"Export{prefix}PartialSuccess"),
        rejected_field=rejected,
        json_request=json_type,
        json_decoder=msgspec.json.Decoder(json_type),
    )


TRACES = _signal("traces", trace_service_pb2, "Trace", "rejected_spans", otlp_json.ExportTraceServiceRequest)
LOGS = _signal("logs", logs_service_pb2, "Logs", "rejected_log_records", otlp_json.ExportLogsServiceRequest)
METRICS = _signal(
    "metrics", metrics_service_pb2, "Metrics", "rejected_data_points", otlp_json.ExportMetricsServiceRequest
)


def decode_request(signal: Signal, payload: bytes, fmt: OtlpFormat) -> tuple[Any, Codec]:
    """The decoded ``Export…ServiceRequest`` and the codec that reads it; undecodable bodies are a 400."""
    if fmt == PROTOBUF:
        if signal is TRACES:
            return _parse(_SpanAttributesAsBytes, payload, signal.request.__name__), _PROTOBUF_SPANS_CODEC
        return _parse(signal.request, payload, signal.request.__name__), PROTOBUF_CODEC
    try:
        return signal.json_decoder.decode(payload), JSON_CODEC
    except RecursionError:  # msgspec gives up around 950 levels (see ingest.decoding)
        raise BadRequestError("The body is nested too deeply to decode.") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError is a DecodeError
        raise BadRequestError(
            f"The body is not a valid OTLP/JSON {signal.request.__name__}: {exc}."
        ) from None


def _parse(message_type: type[Message], payload: bytes, request_name: str) -> Any:
    message = message_type()
    try:
        message.ParseFromString(payload)
    except RecursionError:
        raise BadRequestError("The body is nested too deeply to decode.") from None
    except DecodeError as exc:
        raise BadRequestError(f"The body is not a valid {request_name} protobuf: {exc}.") from None
    return message


# ---------------------------------------------------------------------------------------- responses
def encode_response(signal: Signal, fmt: OtlpFormat, rejected: int, error_message: str | None) -> bytes:
    """The 200 ``Export…ServiceResponse``; ``partial_success`` only when something was rejected."""
    if fmt == JSON:
        if not rejected and not error_message:
            return b"{}"
        field = _camel(signal.rejected_field)
        return msgspec.json.encode({"partialSuccess": {field: rejected, "errorMessage": error_message or ""}})
    response = signal.response()
    if rejected or error_message:
        partial = signal.partial_success(error_message=error_message or "")
        setattr(partial, signal.rejected_field, rejected)
        response.partial_success.CopyFrom(partial)  # type: ignore[attr-defined]
    encoded: bytes = response.SerializeToString()
    return encoded


#: gRPC status codes of the HTTP errors an OTLP endpoint answers (the OTLP/HTTP spec's table).
_GRPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    422: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}


def encode_status(fmt: OtlpFormat, http_status: int, message: str, request_id: str) -> bytes:
    """A ``google.rpc.Status`` error body; the request id travels as a ``google.rpc.RequestInfo`` detail."""
    code = _GRPC_CODES.get(http_status, code_pb2.UNKNOWN)
    if fmt == JSON:
        info = {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": request_id}
        return msgspec.json.encode({"code": code, "message": message, "details": [info]})
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(error_details_pb2.RequestInfo(request_id=request_id))
    encoded: bytes = status.SerializeToString()
    return encoded


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
