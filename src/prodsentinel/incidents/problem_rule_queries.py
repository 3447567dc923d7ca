"""SQL of the by-hand problem changes (``ProblemService.merge``/``detach``, SPEC §14) and of the rules
that keep them: ``problem_merge_rules`` (fingerprints merged together) and ``problem_detach_rules``
(a fingerprint never rejoins a problem). The correlation pass reads the rules in
``problem_queries.EDGES_SQL``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ("ProblemRuleQueries",)


class ProblemRuleQueries:
    """Merge and detach on one session (never commits)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def detach_rules(
        self, project_ids: Sequence[UUID], fingerprints: Sequence[str]
    ) -> set[tuple[str, UUID]]:
        """(fingerprint, problem_id) pairs a by-hand detach forbids."""
        rows = await self.session.execute(
            text(
                """
                SELECT r.fingerprint, r.problem_id FROM problem_detach_rules r
                JOIN unnest(CAST(:pids AS uuid[]), CAST(:fps AS text[])) AS k(pid, fp)
                  ON r.project_id = k.pid AND r.fingerprint = k.fp
                """
            ),
            {"pids": list(project_ids), "fps": list(fingerprints)},
        )
        return {(r.fingerprint, r.problem_id) for r in rows}

    async def move_incidents(self, project_id: UUID, source: UUID, target: UUID) -> None:
        """Every current incident of ``source`` into ``target`` (evidence: merge), with its trace keys."""
        params = {"pid": project_id, "source": source, "target": target}
        await self.session.execute(
            text(
                """
                INSERT INTO problem_members AS m (project_id, problem_id, incident_id, joined_by, signal_ids)
                SELECT i.project_id, :target, i.id, 'merge', coalesce(old.signal_ids, '{}')
                FROM incidents i
                LEFT JOIN problem_members old ON old.project_id = i.project_id
                     AND old.problem_id = :source AND old.incident_id = i.id
                WHERE i.project_id = :pid AND i.problem_id = :source
                ON CONFLICT (project_id, problem_id, incident_id) DO UPDATE SET
                    joined_by = 'merge', joined_at = now()
                """
            ),
            params,
        )
        await self.session.execute(
            text(
                "UPDATE incidents SET problem_id = :target WHERE project_id = :pid AND problem_id = :source"
            ),
            params,
        )
        await self.session.execute(
            text(
                """
                INSERT INTO problem_trace_keys AS t (project_id, problem_id, key, trace_id, first_ts, span_pk)
                SELECT project_id, :target, key, trace_id, first_ts, span_pk FROM problem_trace_keys
                WHERE project_id = :pid AND problem_id = :source
                ON CONFLICT (project_id, problem_id, key, trace_id) DO UPDATE SET
                    first_ts = least(t.first_ts, excluded.first_ts),
                    span_pk = coalesce(t.span_pk, excluded.span_pk)
                """
            ),
            params,
        )
        await self.session.execute(
            text(
                """
                UPDATE problems p SET first_seen = least(p.first_seen, s.first_seen),
                       last_seen = greatest(p.last_seen, s.last_seen),
                       window_until = greatest(p.window_until, s.window_until)
                FROM problems s WHERE p.project_id = :pid AND p.id = :target
                  AND s.project_id = :pid AND s.id = :source
                """
            ),
            params,
        )

    async def fingerprints_of(self, project_id: UUID, problem_ids: Sequence[UUID]) -> list[str]:
        rows = await self.session.scalars(
            text(
                "SELECT DISTINCT fingerprint FROM incidents "
                "WHERE project_id = :pid AND problem_id = ANY(:ids)"
            ),
            {"pid": project_id, "ids": list(problem_ids)},
        )
        return list(rows)

    async def keep_merge(self, project_id: UUID, fingerprints: Sequence[str], group_id: UUID) -> None:
        """One merge group for ``fingerprints`` and every fingerprint already grouped with any of them;
        a by-hand merge also lifts their detach rules against each other's problems."""
        params = {"pid": project_id, "fps": list(fingerprints), "group": group_id}
        await self.session.execute(
            text(
                """
                UPDATE problem_merge_rules SET group_id = :group
                WHERE project_id = :pid AND group_id IN (
                    SELECT group_id FROM problem_merge_rules
                    WHERE project_id = :pid AND fingerprint = ANY(:fps))
                """
            ),
            params,
        )
        await self.session.execute(
            text(
                """
                INSERT INTO problem_merge_rules (project_id, fingerprint, group_id)
                SELECT :pid, fp, :group FROM unnest(CAST(:fps AS text[])) AS fp
                ON CONFLICT (project_id, fingerprint) DO UPDATE SET group_id = excluded.group_id
                """
            ),
            params,
        )

    async def lift_detach(self, project_id: UUID, fingerprints: Sequence[str], problem_id: UUID) -> None:
        await self.session.execute(
            text(
                "DELETE FROM problem_detach_rules "
                "WHERE project_id = :pid AND problem_id = :problem AND fingerprint = ANY(:fps)"
            ),
            {"pid": project_id, "problem": problem_id, "fps": list(fingerprints)},
        )

    async def detach(self, project_id: UUID, incident_id: UUID, fingerprint: str, problem_id: UUID) -> None:
        """Take the incident out of the problem and keep the decision (its fingerprint leaves any merge
        group: a merge and a detach of the same fingerprint cannot both hold)."""
        params = {"pid": project_id, "incident": incident_id, "fp": fingerprint, "problem": problem_id}
        await self.session.execute(
            text(
                "DELETE FROM problem_members "
                "WHERE project_id = :pid AND problem_id = :problem AND incident_id = :incident"
            ),
            params,
        )
        await self.session.execute(
            text("UPDATE incidents SET problem_id = NULL WHERE project_id = :pid AND id = :incident"), params
        )
        await self.session.execute(
            text(
                "INSERT INTO problem_detach_rules (project_id, fingerprint, problem_id) "
                "VALUES (:pid, :fp, :problem) ON CONFLICT DO NOTHING"
            ),
            params,
        )
        await self.session.execute(
            text("DELETE FROM problem_merge_rules WHERE project_id = :pid AND fingerprint = :fp"), params
        )

    async def close_merged(self, project_id: UUID, source: UUID, target: UUID, now: datetime) -> None:
        await self.session.execute(
            text(
                "UPDATE problems SET status = 'resolved', merged_into = :target, resolved_at = :now, "
                "updated_at = :now WHERE project_id = :pid AND id = :source"
            ),
            {"pid": project_id, "source": source, "target": target, "now": now},
        )
