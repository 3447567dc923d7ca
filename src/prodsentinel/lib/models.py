"""The one declarative base for tables that are not advanced-alchemy's UUID/audit bases.

Signal tables (bigint identity keys, written set-based) and the grouping bookkeeping tables have no
``created_at``/``updated_at`` columns, so they cannot use ``UUIDv7AuditBase``. They still share the
application's registry, so every table lands in one metadata with one constraint naming convention,
which is what Alembic compares against (``prodsentinel.db``).
"""

from __future__ import annotations

from advanced_alchemy.base import orm_registry
from sqlalchemy.orm import DeclarativeBase

__all__ = ("PlainBase",)


class PlainBase(DeclarativeBase):
    """Tables without advanced-alchemy's audit columns, on the application metadata."""

    registry = orm_registry
    metadata = orm_registry.metadata
