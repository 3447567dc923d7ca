"""Per-request ingest counts, for metrics.

A no-op seam today: observability turns it into the Prometheus counters
``prodsentinel_ingested_signals_total{type}`` and ``prodsentinel_ingest_duplicates_total{type}``.
``kind`` is ``"logs"``, ``"spans"`` or ``"metrics"``. Called once per successful request, after commit,
on the hot path: keep it O(1).
"""

from __future__ import annotations

__all__ = ("record_ingest",)


def record_ingest(kind: str, accepted: int, duplicates: int) -> None:
    """Count one committed ingest request's new and duplicate signals of ``kind``."""
    del kind, accepted, duplicates
