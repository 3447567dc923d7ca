"""Benchmark: what inhibit rules add to an evaluation pass (SPEC §13), measured side by side.

    uv run python bench/inhibition.py [--alerts 1000] [--groups 100] [--rules 20] [--rounds 2]

Creates a fresh database on the PostgreSQL server of ``BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it, and makes ``--alerts`` ``incident``
policies in one project, all firing on one open incident, spread over ``--groups`` clusters (label
``cluster``) and 20 tiers (label ``tier``), half of them ``role=cause`` and half ``role=symptom``. ``--rules`` rules ``{source: role=cause, tier=tK; target: role=~symptom|other,
tier=~tK|tK'; equal: [cluster]}`` then mute most symptoms. One webhook channel makes every notifying
transition write its outbox row.

Each round times ``alerts.evaluator.run_evaluation`` (the cron's code path) without rules and with
them, on the same data, alternating: the pass in which every alert fires at once (burst: 1,000
transitions, each with its audit row, and outbox rows for the alerts not muted) and a steady pass
(values recomputed, nothing changes). Between runs the alerts, outbox and audit rows are deleted. The
incident policies' value query is trivial, so the pass is mostly plan + writes: the share routing adds
is an upper bound for passes with real signal queries. The database is dropped at the end.
"""

# ruff: noqa: E501  (long SQL literals read better unwrapped)
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from prodsentinel.alerts import evaluator
from prodsentinel.alerts.inhibition import parse_rule, rule_fingerprint
from prodsentinel.alerts.models import AlertPolicy, InhibitRule
from prodsentinel.alerts.policies import normalise
from prodsentinel.incidents.models import Incident
from prodsentinel.lib.database import alchemy_config, migrate
from prodsentinel.notifications.models import Channel

TIERS = 20


def policy_rows(project_id: uuid.UUID, alerts: int, groups: int) -> list[dict[str, Any]]:
    """Alert j of cluster c: tier t((c + j // 2) mod 20), a cause when j is even, else a symptom."""
    rows = []
    for i in range(alerts):
        cluster, j = i % groups, i // groups
        raw = {
            "name": f"p-{i}",
            "kind": "incident",
            "severity": "high",
            "min_severity": "low",
            "labels": {
                "cluster": f"c{cluster}",
                "tier": f"t{(cluster + j // 2) % TIERS}",
                "role": "cause" if j % 2 == 0 else "symptom",
            },
        }
        rows.append({"id": uuid.uuid4(), "project_id": project_id, **normalise(raw).columns()})
    return rows


def rule_rows(project_id: uuid.UUID, rules: int) -> list[dict[str, Any]]:
    rows = []
    for k in range(rules):
        spec = parse_rule(
            [
                {"name": "role", "op": "=", "value": "cause"},
                {"name": "tier", "op": "=", "value": f"t{k % TIERS}"},
            ],
            [
                {"name": "role", "op": "=~", "value": "symptom|other"},
                {"name": "tier", "op": "=~", "value": f"t{k % TIERS}|t{(k + 1) % TIERS}"},
            ],
            ["cluster"],
        )
        rows.append(
            {
                "project_id": project_id,
                "id": uuid.uuid4(),
                **spec.wire(),
                "fingerprint": rule_fingerprint(spec),
                "origin": "api",
                "created_by": "bench",
                "created_at": datetime.now(UTC),
            }
        )
    return rows


async def reset(session_maker: async_sessionmaker[AsyncSession]) -> None:
    async with session_maker() as session, session.begin():
        # TRUNCATE, not DELETE: dead rows would make every later run slower than the first.
        await session.execute(text("TRUNCATE alerts, outbox_items, audit_events, inhibit_rules CASCADE"))


async def timed_passes(
    session_maker: async_sessionmaker[AsyncSession], now: datetime, label: str
) -> tuple[float, float]:
    burst = await evaluator.run_evaluation(session_maker, interval_seconds=30, now=now)
    steady = await evaluator.run_evaluation(
        session_maker, interval_seconds=30, now=now + timedelta(seconds=30)
    )
    print(
        f"  {label:>8}: burst {burst.duration_ms:7.0f} ms ({burst.fired} fired, {burst.notified} outbox events), "
        f"steady {steady.duration_ms:6.0f} ms ({steady.transitions} transitions)"
    )
    return burst.duration_ms, steady.duration_ms


async def run(args: argparse.Namespace) -> None:
    server = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"ps_bench_inhibit_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    parts = urlsplit(server)
    query = f"?{parts.query}" if parts.query else ""
    url = f"postgresql+asyncpg://{parts.netloc}/{name}{query}"
    try:
        await asyncio.to_thread(migrate, alchemy_config(url))
        engine = create_async_engine(url, pool_size=2)
        session_maker = async_sessionmaker(engine, expire_on_commit=False)
        project_id = uuid.uuid4()
        now = datetime.now(UTC).replace(microsecond=0)
        async with session_maker() as session, session.begin():
            await session.execute(
                text(
                    "INSERT INTO projects (id, name, created_at, updated_at) VALUES (:id, 'bench', now(), now())"
                ),
                {"id": project_id},
            )
            await session.execute(insert(AlertPolicy), policy_rows(project_id, args.alerts, args.groups))
            session.add(
                Incident(
                    project_id=project_id,
                    fingerprint="f",
                    title="db down",
                    service_name="db",
                    severity="high",
                    first_seen=now,
                    last_seen=now,
                )
            )
            session.add(Channel(project_id=project_id, name="hook", url="http://127.0.0.1:9/"))
        results: dict[str, list[tuple[float, float]]] = {"no rules": [], "rules": []}
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}")
            for label in ("no rules", "rules") if round_ % 2 == 0 else ("rules", "no rules"):
                await reset(session_maker)
                if label == "rules":
                    async with session_maker() as session, session.begin():
                        await session.execute(insert(InhibitRule), rule_rows(project_id, args.rules))
                results[label].append(await timed_passes(session_maker, now, label))
        await engine.dispose()
        base_burst = statistics.median(b for b, _ in results["no rules"])
        base_steady = statistics.median(s for _, s in results["no rules"])
        with_burst = statistics.median(b for b, _ in results["rules"])
        with_steady = statistics.median(s for _, s in results["rules"])
        print(
            f"RESULT: {args.alerts} firing alerts in {args.groups} groups, {args.rules} inhibit rules: "
            f"burst {base_burst:.0f} -> {with_burst:.0f} ms ({(with_burst / base_burst - 1) * 100:+.0f} %), "
            f"steady {base_steady:.0f} -> {with_steady:.0f} ms ({(with_steady / base_steady - 1) * 100:+.0f} %)"
        )
    finally:
        admin = await asyncpg.connect(server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--rules", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
