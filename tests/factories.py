"""polyfactory factories shared by the test suites (each domain keeps its part self-contained)."""

from __future__ import annotations

# --- ingest: wire structs of SPEC §4 -----------------------------------------------------------------
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from polyfactory import Use
from polyfactory.factories.msgspec_factory import MsgspecFactory

from prodsentinel.ingest.schemas import LogIn, MetricIn, SpanIn

_SERVICES = ("checkout", "payments", "inventory", "gateway")


def _recent() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=random.uniform(0, 3600))


def _hex(length: int) -> str:
    return "".join(random.choices("0123456789abcdef", k=length))


class LogInFactory(MsgspecFactory[LogIn]):
    service_name = Use(random.choice, _SERVICES)
    timestamp = Use(_recent)
    level = Use(random.choice, ["DEBUG", "info", "WARN", "WARNING", "INFO"])
    trace_id = Use(_hex, 32)
    span_id = Use(_hex, 16)
    attributes = Use(lambda: {"http.method": "GET", "attempt": random.randint(1, 3)})


class SpanInFactory(MsgspecFactory[SpanIn]):
    trace_id = Use(_hex, 32)
    span_id = Use(_hex, 16)
    parent_span_id = None
    service_name = Use(random.choice, _SERVICES)
    name = Use(random.choice, ["GET /cart", "SELECT orders", "charge"])
    start_time = Use(_recent)
    end_time = Use(lambda: datetime.now(UTC))
    status = Use(random.choice, ["UNSET", "OK"])
    attributes = Use(lambda: {"db.system": "postgresql"})

    @classmethod
    def build(cls, **kwargs: Any) -> SpanIn:
        span = super().build(**kwargs)
        if "end_time" not in kwargs and span.end_time < span.start_time:
            span.end_time = span.start_time + timedelta(milliseconds=random.randint(1, 500))
        return span


class MetricInFactory(MsgspecFactory[MetricIn]):
    name = Use(random.choice, ["http.latency_ms", "queue.depth", "cpu.util"])
    value = Use(random.uniform, 0, 1000)
    service_name = Use(random.choice, _SERVICES)
    timestamp = Use(_recent)
    labels = Use(lambda: {"region": random.choice(["eu", "us"]), "host": f"h{random.randint(1, 9)}"})


# --- end ingest ----------------------------------------------------------------------------------------
