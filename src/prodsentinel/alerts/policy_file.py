"""``PRODSENTINEL_POLICIES_FILE``: declarative alert policies, checked before any command runs.

Three steps, each stricter than the last:

1. :func:`parse_policies_file` (no database): YAML via ``lib.config_files``, every item's fields,
   kind and values through the same ``alerts.policies.normalise`` as the API, Python's regex check;
   the CLI runs it before any command, so a bad file is one line on stderr and exit code 2;
2. :func:`check_policies_file_in_database` (``run``, before serving): PostgreSQL must accept every
   ``/regex/`` query too, on a short-lived connection;
3. :func:`load_policies_file` (app start): both checks again, then an upsert by (project, name) in one
   transaction, serialised across instances by an advisory lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from prodsentinel.alerts.policies import (
    COMMON_FIELDS,
    KIND_FIELDS,
    PolicyError,
    PolicySpec,
    normalise,
    q_regex,
)
from prodsentinel.alerts.repositories import PolicyRepository
from prodsentinel.alerts.services import check_regex_in_database
from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.auth.services import ProjectService
from prodsentinel.lib.config_files import config_file_error, read_yaml_list
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.errors import ValidationError
from prodsentinel.lib.time import utcnow
from prodsentinel.settings import Settings, SettingsError

__all__ = (
    "POLICIES_FILE_ACTOR",
    "PolicyFileItem",
    "check_policies_file_in_database",
    "load_policies_file",
    "parse_policies_file",
)

logger = structlog.get_logger("prodsentinel.alerts")

POLICIES_FILE_ACTOR = "system:policies-file"
_VARIABLE = "PRODSENTINEL_POLICIES_FILE"


@dataclass(frozen=True, slots=True)
class PolicyFileItem:
    """One valid item of ``PRODSENTINEL_POLICIES_FILE``: the policy and the name of its project."""

    project: str
    spec: PolicySpec


def _policies_file_error(path: Path, reason: str) -> SettingsError:
    return config_file_error(_VARIABLE, path, reason)


def _policy_file_item(raw: Mapping[Any, Any]) -> PolicyFileItem:
    allowed = {"project", *COMMON_FIELDS, *(name for names in KIND_FIELDS.values() for name in names)}
    unknown = sorted(str(key) for key in set(raw) - allowed)
    if unknown:
        raise PolicyError(f"unknown field(s) {', '.join(unknown)}")
    project = raw.get("project", "default")
    if not isinstance(project, str) or not 0 < len(project.strip()) <= 100:
        raise PolicyError("project must be a string of 1 to 100 characters.")
    spec = normalise({key: value for key, value in raw.items() if key != "project"})
    return PolicyFileItem(project=project.strip(), spec=spec)


def parse_policies_file(path: Path) -> list[PolicyFileItem]:
    """Read and validate the whole file without a database: YAML, shape, every item's fields, kind and
    values (Python's regex check included). Any problem is one SettingsError line naming the variable
    and the item; the CLI checks the file this way before any command runs."""
    items: list[PolicyFileItem] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(read_yaml_list(_VARIABLE, path, key="policies", what="policy")):
        try:
            item = _policy_file_item(raw)
        except PolicyError as exc:
            raise _policies_file_error(path, f"item {index} ({raw.get('name')!r}): {exc}") from None
        if (item.project, item.spec.name) in seen:
            reason = f"item {index}: duplicate policy {item.spec.name!r} in project {item.project!r}"
            raise _policies_file_error(path, reason)
        seen.add((item.project, item.spec.name))
        items.append(item)
    return items


async def _check_file_regexes(session: AsyncSession, path: Path, items: Sequence[PolicyFileItem]) -> None:
    """The one check that needs PostgreSQL: a ``/regex/`` query must compile there too."""
    for index, item in enumerate(items):
        try:
            await check_regex_in_database(session, item.spec)
        except ValidationError as exc:
            raise _policies_file_error(path, f"item {index} ({item.spec.name!r}): {exc.detail}") from None


def _has_regex(item: PolicyFileItem) -> bool:
    q = item.spec.params.get("q")
    return isinstance(q, str) and q_regex(q) is not None


async def check_policies_file_in_database(
    database_url: str, path: Path, items: Sequence[PolicyFileItem]
) -> None:
    """Before serving: the PostgreSQL regex check of :func:`load_policies_file`, on a short-lived
    connection (no schema needed). Skipped when the database cannot be reached: the start reports that."""
    if not any(_has_regex(item) for item in items):
        return
    engine = create_async_engine(database_url, poolclass=NullPool, connect_args={"timeout": 10})
    try:
        async with AsyncSession(engine) as session:
            try:
                await session.connection()
            except (OSError, DBAPIError):
                return
            await _check_file_regexes(session, path, items)
    finally:
        await engine.dispose()


async def load_policies_file(session_maker: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Load ``PRODSENTINEL_POLICIES_FILE`` at start: upsert each item by (project, name).

    The whole file is validated (:func:`parse_policies_file`, then the regex check in PostgreSQL)
    before anything is written, in one transaction; an invalid file raises :class:`SettingsError`
    naming the variable, the item and the problem. Instances that start together serialise on an
    advisory lock, so the upserts never race.
    """
    if settings.policies_file is None:
        return 0
    path = settings.policies_file
    items = parse_policies_file(path)
    async with session_scope(session_maker) as session:
        policies = PolicyRepository(session=session)
        await policies.lock_policies_file()
        await _check_file_regexes(session, path, items)
        async with ProjectService.new(session=session) as projects:
            for item in items:
                project = await projects.get_or_create(item.project)
                policy_id = await policies.upsert_by_name(project.id, item.spec.columns(), utcnow())
                await audit_services.record(
                    session,
                    AuditEntry(
                        project_id=project.id,
                        actor=POLICIES_FILE_ACTOR,
                        action="policy.load",
                        subject_type="policy",
                        subject_id=policy_id,
                        details={"file": str(path), "name": item.spec.name},
                    ),
                )
    logger.info("alert_policies_loaded", file=str(path), count=len(items))
    return len(items)
