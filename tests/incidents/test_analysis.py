"""Root-cause analysis: the built-in analyser, the signed external webhook, SAQ job-key dedup."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from saq import Queue
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents import analysis, grouping, tasks, transitions
from prodsentinel.incidents.models import Anomaly, Incident
from prodsentinel.lib import jobs
from prodsentinel.notifications.signing import verify
from prodsentinel.settings import Settings
from tests.conftest import Tenant
from tests.incidents.conftest import drain, incidents_of
from tests.incidents.receiver import http_receiver
from tests.incidents.seed import log_row, seed, span_row


def ms(base: datetime, n: int) -> datetime:
    return base + timedelta(milliseconds=n)


async def seed_checkout_failure(
    session_maker: async_sessionmaker[AsyncSession], project: UUID, clock: datetime, traces: int = 3
) -> None:
    """gateway -> orders -> payments(charge card fails; its db query is fine), errors logged on the way up."""
    spans: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    for t in range(traces):
        trace, start = f"trace-{t}", clock + timedelta(seconds=10 * t)
        spans += [
            span_row(
                project,
                service="gateway",
                name="GET /checkout",
                trace_id=trace,
                span_id=f"g{t}",
                start=start,
                duration_ms=100,
            ),
            span_row(
                project,
                service="orders",
                name="POST /orders",
                trace_id=trace,
                span_id=f"o{t}",
                parent_span_id=f"g{t}",
                start=ms(start, 10),
                duration_ms=80,
            ),
            span_row(
                project,
                service="payments",
                name="charge card",
                trace_id=trace,
                span_id=f"p{t}",
                parent_span_id=f"o{t}",
                start=ms(start, 20),
                duration_ms=40,
            ),
            span_row(
                project,
                service="payments",
                name="SELECT cards",
                trace_id=trace,
                span_id=f"d{t}",
                parent_span_id=f"p{t}",
                start=ms(start, 25),
                duration_ms=30,
                status="OK",
            ),
        ]
        logs += [
            log_row(
                project,
                service="payments",
                message="card processor timeout",
                ts=ms(start, 58),
                trace_id=trace,
            ),
            log_row(project, service="orders", message="payment failed", ts=ms(start, 85), trace_id=trace),
            log_row(
                project,
                service="gateway",
                message="checkout failed: upstream 502",
                ts=ms(start, 99),
                trace_id=trace,
            ),
        ]
    # an unrelated burst in another service in the same window
    logs += [
        log_row(project, service="inventory", message=f"stock sync {i} failed", ts=ms(clock, 500 + i))
        for i in range(4)
    ]
    await seed(session_maker, "span", spans)
    await seed(session_maker, "log", logs)


async def gateway_incident(session_maker: async_sessionmaker[AsyncSession], project: UUID) -> Incident:
    [incident] = [
        i for i in await incidents_of(session_maker, project) if i.title.startswith("gateway: checkout")
    ]
    return incident


class TestAnalyser:
    async def test_finds_the_origin_service_and_evidence_and_calls_the_signed_webhook(
        self,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        await seed_checkout_failure(session_maker, tenant.project_id, clock)
        await grouping.run_grouping(session_maker, now=clock)
        incident = await gateway_incident(session_maker, tenant.project_id)
        assert incident.severity == "high"  # medium, one level up: the trace fails in 3 services
        async with session_maker() as session:
            session.add(
                Anomaly(
                    project_id=tenant.project_id,
                    metric_name="db_latency_ms",
                    service_name="payments",
                    labels={},
                    labels_key="{}",
                    ts=clock + timedelta(seconds=5),
                    value=900.0,
                    expected=20.0,
                    score=42.0,
                )
            )
            await session.commit()

        with http_receiver() as receiver:
            configured = settings.with_overrides(
                analysis_webhook_url=receiver.url, analysis_webhook_secret="s3cret"
            )
            result = await analysis.run_analysis(
                session_maker, incident.project_id, incident.id, settings=configured, now=clock
            )

            assert result is not None
            assert result["version"] == 1
            assert result["origin_service"] == "payments"
            assert result["origin_span"]["name"] == "charge card"
            assert result["origin_span"]["depth"] == 2
            assert result["first_error"]["service_name"] == "payments"
            assert result["first_error"]["kind"] == "log"
            bursts = {b["service_name"]: b["errors"] for b in result["related_bursts"]}
            assert bursts["inventory"] == 4
            assert "gateway" not in bursts
            assert [a["metric"] for a in result["anomalies"]] == ["db_latency_ms"]
            assert result["evidence"]["spans"]
            assert result["evidence"]["logs"]
            assert result["evidence"]["anomalies"] == [result["anomalies"][0]["id"]]
            assert "payments" in result["summary"]
            assert "likely origin" in result["summary"]

            [stored] = [
                i for i in await incidents_of(session_maker, tenant.project_id) if i.id == incident.id
            ]
            assert stored.analysis == result
            assert stored.analysed_at == clock

            [request] = receiver.requests
            headers = request.headers
            assert verify(
                "s3cret",
                headers["x-prodsentinel-timestamp"],
                request.body,
                headers["x-prodsentinel-signature"],
                now=int(time.time()),
            )
            body = json.loads(request.body)
            assert body["event_type"] == "INCIDENT_ANALYSIS_REQUESTED"
            assert body["event_id"] == headers["x-prodsentinel-event-id"]
            assert body["incident"]["id"] == str(incident.id)
            assert body["analysis"]["origin_service"] == "payments"

    async def test_log_only_incident_falls_back_to_the_earliest_error(
        self,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        await seed(
            session_maker,
            "log",
            [
                log_row(tenant.project_id, service="db", message="replica lag", ts=clock, trace_id="L1"),
                log_row(
                    tenant.project_id, service="api", message="stale read", ts=ms(clock, 5), trace_id="L1"
                ),
            ],
        )
        await grouping.run_grouping(session_maker, now=clock)
        [incident] = [
            i for i in await incidents_of(session_maker, tenant.project_id) if i.service_name == "api"
        ]
        result = await analysis.run_analysis(
            session_maker, incident.project_id, incident.id, settings=settings, now=clock
        )
        assert result is not None
        assert result["origin_span"] is None
        assert result["origin_service"] == "db"
        assert result["first_error"]["text"] == "replica lag"
        assert await analysis.run_analysis(session_maker, uuid4(), uuid4(), settings=settings) is None
        # another project's incident id is as unknown as a missing one
        assert (
            await analysis.run_analysis(session_maker, uuid4(), incident.id, settings=settings, now=clock)
        ) is None
        # a job enqueued before jobs carried the project (rolling upgrade) still analyses its incident
        legacy = await analysis.run_analysis(session_maker, None, incident.id, settings=settings, now=clock)
        assert legacy is not None
        assert legacy["origin_service"] == "db"
        assert await analysis.run_analysis(session_maker, None, uuid4(), settings=settings) is None


class TestAnalysisDedup:
    async def test_fifty_enqueues_make_one_run_and_a_later_escalation_reruns(
        self,
        queue: Queue,
        database_url: str,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        await seed_checkout_failure(session_maker, tenant.project_id, clock, traces=1)
        jobs.bind_queue(None)  # group without announcing, so the 50 requests below are the only ones
        await grouping.run_grouping(session_maker, now=clock)
        jobs.bind_queue(queue)
        incident = await gateway_incident(session_maker, tenant.project_id)
        runs: list[str] = []

        @functools.wraps(tasks.analyse_incident)  # the same job name; counts the runs that finished
        async def analyse_incident(ctx: Any, *, project_id: str, incident_id: str) -> dict[str, Any]:
            result = await tasks.analyse_incident(ctx, project_id=project_id, incident_id=incident_id)
            if incident_id == str(incident.id):
                runs.append("complete")
            return result

        async def run_analysis_job() -> None:
            await drain(
                queue,
                database_url,
                f"analyse:{incident.id}",
                functions=[analyse_incident],
                session_maker=session_maker,
                settings=settings,
            )

        accepted = await asyncio.gather(
            *(transitions.enqueue_analysis(incident.project_id, incident.id) for _ in range(50))
        )
        assert sum(accepted) == 1
        await run_analysis_job()
        assert runs == ["complete"]
        [stored] = [i for i in await incidents_of(session_maker, tenant.project_id) if i.id == incident.id]
        assert stored.analysis is not None
        assert stored.analysis["origin_service"] == "payments"

        # SAQ re-queues a finished key only for a later schedule second: refused until the clock ticks
        deadline = time.monotonic() + 5
        while not await transitions.enqueue_analysis(incident.project_id, incident.id):
            assert time.monotonic() < deadline, "a finished analysis was never re-queued"
            await asyncio.sleep(0.05)
        assert await transitions.enqueue_analysis(incident.project_id, incident.id) is False
        await run_analysis_job()
        assert runs == ["complete", "complete"]
