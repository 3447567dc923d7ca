from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from prodsentinel.auth.guards import SESSION_MAKER_STATE_KEY
from prodsentinel.lib.structs import Struct
from prodsentinel.system import health

__all__ = ("HealthController",)


class Liveness(Struct):
    status: str


class Readiness(Struct):
    status: str
    database: str
    migrations: str


class HealthController(Controller):
    """Public health endpoints (no API key)."""

    path = "/health"
    tags = ["health"]
    opt = {"exclude_from_auth": True, "no_rate_limit": True}

    @get("/", summary="Dependency health: database, queue and redis, each with latency")
    async def health(self, request: Request[Any, Any, Any]) -> health.HealthReport:
        session_maker = request.app.state[SESSION_MAKER_STATE_KEY]
        report = health.HealthReport(
            status="ok",
            database=await health.check_database(session_maker),
            queue=await health.check_queue(),
            redis=await health.check_redis(request.app.state.get("redis")),
        )
        if "error" in {report.database.status, report.queue.status, report.redis.status}:
            report.status = "degraded"
        return report

    @get("/live", summary="Liveness: the process answers")
    async def live(self) -> Liveness:
        return Liveness(status="ok")

    @get("/ready", summary="Readiness: 503 until migrations are applied and the database answers")
    async def ready(self, request: Request[Any, Any, Any]) -> Response[Readiness]:
        session_maker = request.app.state[SESSION_MAKER_STATE_KEY]
        database = await health.check_database(session_maker)
        migrated = database.status == "ok" and await health.migrations_applied(session_maker)
        ready = database.status == "ok" and migrated
        body = Readiness(
            status="ready" if ready else "not_ready",
            database=database.status,
            migrations="applied" if migrated else "pending",
        )
        return Response(body, status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE)
