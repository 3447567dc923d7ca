"""The stored-state snapshot behind ``/metrics``: one SQL round trip over the other domains' tables.

The snapshot is hand-written SQL in a plain query class (it reads six tables and belongs to none): a
single statement of scalar sub-selects, each aggregated to JSON, so a scrape costs one round trip
whatever the number of series. Every figure is
across all projects (``/metrics`` is an operator endpoint) and read from the database at scrape time, so
every API replica reports the same value and no worker has to push anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = (
    "LATENCY_BUCKETS_SECONDS",
    "OUTBOX_WAITING_STATUSES",
    "StoredState",
    "StoredStateQueries",
)

#: Upper bounds of ``prodsentinel_notifications_delivery_latency_seconds`` (prometheus_client's defaults).
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Outbox items not yet delivered nor given up: "pending" in the metrics' sense.
OUTBOX_WAITING_STATUSES = ("pending", "retrying", "delivering")
#: A scrape must never hang on a locked or overloaded database.
STATEMENT_TIMEOUT_MS = 5000


@dataclass
class StoredState:
    incidents_open: dict[str, int] = field(default_factory=dict)
    alerts_active: dict[str, int] = field(default_factory=dict)
    alert_transitions: int = 0
    silences_active: int = 0
    alerts_inhibited: int = 0
    #: (channel name, outcome) -> attempts
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)
    #: cumulative counts, one per LATENCY_BUCKETS_SECONDS bound
    latency_buckets: list[int] = field(default_factory=list)
    latency_count: int = 0
    latency_sum_seconds: float = 0.0
    outbox_pending: int = 0
    outbox_dead: int = 0
    outbox_oldest_pending_age_seconds: float = 0.0
    #: loop -> unix seconds of the last tick
    scheduler_ticks: dict[str, float] = field(default_factory=dict)
    #: grouped notifications by reason; escalation step notifications by step index (SPEC §13)
    grouped: dict[str, int] = field(default_factory=dict)
    escalation_steps: dict[str, int] = field(default_factory=dict)


def _latency_columns() -> str:
    # Bounds are constants of this module (never user input), so inlining them is safe.
    return ", ".join(
        f"count(*) FILTER (WHERE duration_ms <= {bound * 1000:g})" for bound in LATENCY_BUCKETS_SECONDS
    )


_WAITING = ", ".join(f"'{status}'" for status in OUTBOX_WAITING_STATUSES)

# Alert transitions are the alert audit rows whose action is a state (alert.pending, alert.firing,
# alert.resolved, ...). Acks (alert.ack / alert.unack / alert.acked ...) are audit rows of alerts too
# but not transitions, hence the NOT LIKE. Silences and manual evaluations have their own subject types.
SNAPSHOT_SQL = f"""
SELECT
  (SELECT coalesce(jsonb_object_agg(severity, n), '{{}}'::jsonb)
     FROM (SELECT severity, count(*) AS n FROM incidents
            WHERE status IN ('open', 'acknowledged') GROUP BY severity) AS s) AS incidents_open,
  (SELECT coalesce(jsonb_object_agg(severity, n), '{{}}'::jsonb)
     FROM (SELECT severity, count(*) AS n FROM alerts WHERE state = 'firing' GROUP BY severity) AS s)
     AS alerts_active,
  (SELECT count(*) FROM audit_events
    WHERE subject_type = 'alert' AND action LIKE 'alert.%' AND action NOT LIKE 'alert.%ack%')
    AS alert_transitions,
  (SELECT count(*) FROM silences
    WHERE expired_at IS NULL AND starts_at <= now() AND ends_at > now()) AS silences_active,
  (SELECT count(*) FROM alerts WHERE state = 'firing' AND inhibited_by IS NOT NULL) AS alerts_inhibited,
  (SELECT coalesce(jsonb_agg(jsonb_build_array(coalesce(c.name, a.channel_id::text), a.outcome, a.n,
                                                a.buckets, a.total_ms)), '[]'::jsonb)
     FROM (SELECT project_id, channel_id, outcome, count(*) AS n,
                  jsonb_build_array({_latency_columns()}) AS buckets,
                  coalesce(sum(duration_ms), 0) AS total_ms
             FROM delivery_attempts GROUP BY project_id, channel_id, outcome) AS a
     LEFT JOIN notification_channels AS c ON c.project_id = a.project_id AND c.id = a.channel_id)
     AS attempts,
  (SELECT count(*) FROM outbox_items WHERE status IN ({_WAITING})) AS outbox_pending,
  (SELECT count(*) FROM outbox_items WHERE status = 'dead') AS outbox_dead,
  (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox_items
    WHERE status IN ({_WAITING})) AS outbox_oldest_pending_age,
  (SELECT coalesce(jsonb_object_agg(loop, extract(epoch FROM last_tick_at)), '{{}}'::jsonb)
     FROM scheduler_ticks) AS scheduler_ticks,
  (SELECT coalesce(jsonb_object_agg(label, n), '{{}}'::jsonb)
     FROM (SELECT label, sum(value) AS n FROM notification_counters WHERE name = 'grouped'
            GROUP BY label) AS g)
     AS grouped,
  (SELECT coalesce(jsonb_object_agg(label, n), '{{}}'::jsonb)
     FROM (SELECT label, sum(value) AS n FROM notification_counters WHERE name = 'escalation_step'
            GROUP BY label) AS e) AS escalation_steps
"""


class StoredStateQueries:
    """The ``/metrics`` snapshot on one session (read-only)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def fetch(self) -> StoredState:
        """Read every stored-state figure in one statement (read-only, bounded by a statement timeout)."""
        await self.session.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
        row = (await self.session.execute(text(SNAPSHOT_SQL))).mappings().one()
        # One scan of the ledger grouped by (channel, outcome): the counter per group, and the latency
        # histogram as the sum of the groups' cumulative bucket counts.
        attempts: dict[tuple[str, str], int] = {}
        buckets = [0] * len(LATENCY_BUCKETS_SECONDS)
        latency_count, latency_sum_ms = 0, 0.0
        for channel, outcome, n, group_buckets, total_ms in row["attempts"]:
            key = (str(channel), str(outcome))
            attempts[key] = attempts.get(key, 0) + int(n)  # two channels may share a name across projects
            buckets = [a + int(b) for a, b in zip(buckets, group_buckets, strict=True)]
            latency_count += int(n)
            latency_sum_ms += float(total_ms)
        return StoredState(
            incidents_open={str(k): int(v) for k, v in row["incidents_open"].items()},
            alerts_active={str(k): int(v) for k, v in row["alerts_active"].items()},
            alert_transitions=int(row["alert_transitions"]),
            silences_active=int(row["silences_active"]),
            alerts_inhibited=int(row["alerts_inhibited"]),
            attempts=attempts,
            latency_buckets=buckets,
            latency_count=latency_count,
            latency_sum_seconds=latency_sum_ms / 1000.0,
            outbox_pending=int(row["outbox_pending"]),
            outbox_dead=int(row["outbox_dead"]),
            outbox_oldest_pending_age_seconds=max(0.0, float(row["outbox_oldest_pending_age"])),
            scheduler_ticks={str(k): float(v) for k, v in row["scheduler_ticks"].items()},
            grouped={str(k): int(v) for k, v in row["grouped"].items()},
            escalation_steps={str(k): int(v) for k, v in row["escalation_steps"].items()},
        )
