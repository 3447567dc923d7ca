"""project-scoped keys: every primary key, unique constraint and foreign key between project-owned tables
leads with project_id (SPEC §16, distributed-PostgreSQL readiness; docs/scaling.md)

Revision ID: 7c1e2d9a4b60
Revises: 51cd6369386a
Create Date: 2026-12-02 11:00:00

Converts an existing installation in place, without losing a row:
- ``notification_channel_state`` gets ``project_id``, backfilled from its channel;
- the single-column keys of the project-owned tables become ``(project_id, id)`` (same constraint names);
- the unique constraints without ``project_id`` get it as their first column;
- foreign keys between project-owned tables become composite ``(project_id, x_id) -> (project_id, id)``
  (the form Citus needs to co-locate them);
- three indexes that the new primary keys make redundant are dropped.

Each ``ALTER TABLE`` rebuilds one btree under an ACCESS EXCLUSIVE lock on that table; on these tables (not
the signal tables, which the storage change converts) that is seconds. The downgrade restores the old keys.

The signal tables (logs, spans, metric_points) are converted by the storage change, not here.
"""

import warnings

from alembic import op

__all__ = ("downgrade", "upgrade")

# revision identifiers, used by Alembic.
revision = "7c1e2d9a4b60"
down_revision = "51cd6369386a"
branch_labels = None
depends_on = None

#: Tables whose primary key goes from ``(id)`` to ``(project_id, id)``.
_ID_TABLES = (
    "alert_policies",
    "alerts",
    "silences",
    "audit_events",
    "incidents",
    "anomalies",
    "incident_occurrences",
    "notification_channels",
    "outbox_items",
    "delivery_attempts",
)

#: (table, old name, old columns, new name, new columns) of the unique constraints that gain project_id.
_UNIQUES = (
    ("alerts", "uq_alerts_policy_id", "policy_id, labels_key", "uq_alerts_project_id",
     "project_id, policy_id, labels_key"),
    ("outbox_items", "uq_outbox_items_delivery_id", "delivery_id", "uq_outbox_items_project_id",
     "project_id, delivery_id"),
    ("incident_occurrences", "uq_incident_occurrences_source", "source, signal_pk",
     "uq_incident_occurrences_project_id", "project_id, source, signal_pk"),
)

#: (table, column, parent) of the foreign keys between project-owned tables (all ON DELETE CASCADE).
_CHILD_FKS = (
    ("alerts", "policy_id", "alert_policies"),
    ("outbox_items", "channel_id", "notification_channels"),
    ("delivery_attempts", "outbox_id", "outbox_items"),
    ("notification_channel_state", "channel_id", "notification_channels"),
)

#: Indexes the new primary keys make redundant (their columns are a prefix of it): (name, table, columns).
_REDUNDANT_INDEXES = (
    ("ix_alert_policies_project_id", "alert_policies", "project_id"),
    ("ix_notification_channels_project_id", "notification_channels", "project_id"),
    ("ix_incidents_project_id", "incidents", "project_id, id"),
)


def upgrade() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        _upgrade()


def downgrade() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        _downgrade()


def _upgrade() -> None:
    # The old single-column foreign keys depend on the primary keys about to change.
    for table, column, parent in _CHILD_FKS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT fk_{table}_{column}_{parent}")

    # The one child table without project_id: backfill it from the channel, set-based.
    op.execute("ALTER TABLE notification_channel_state ADD COLUMN project_id uuid")
    op.execute(
        "UPDATE notification_channel_state s SET project_id = c.project_id "
        "FROM notification_channels c WHERE c.id = s.channel_id"
    )
    op.execute("ALTER TABLE notification_channel_state ALTER COLUMN project_id SET NOT NULL")
    op.execute(
        "ALTER TABLE notification_channel_state ADD CONSTRAINT fk_notification_channel_state_project_id_projects "
        "FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE"
    )
    op.execute(
        "ALTER TABLE notification_channel_state DROP CONSTRAINT pk_notification_channel_state, "
        "ADD CONSTRAINT pk_notification_channel_state PRIMARY KEY (project_id, channel_id, subject)"
    )

    for table in _ID_TABLES:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}, "
            f"ADD CONSTRAINT pk_{table} PRIMARY KEY (project_id, id)"
        )
    for table, old_name, _old_columns, new_name, new_columns in _UNIQUES:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT {old_name}, ADD CONSTRAINT {new_name} UNIQUE ({new_columns})"
        )
    for table, column, parent in _CHILD_FKS:
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_project_id_{parent} "
            f"FOREIGN KEY (project_id, {column}) REFERENCES {parent} (project_id, id) ON DELETE CASCADE"
        )
    for name, _table, _columns in _REDUNDANT_INDEXES:
        op.execute(f"DROP INDEX {name}")


def _downgrade() -> None:
    for name, table, columns in _REDUNDANT_INDEXES:
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    for table, _column, parent in _CHILD_FKS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT fk_{table}_project_id_{parent}")
    for table, old_name, old_columns, new_name, _new_columns in _UNIQUES:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT {new_name}, ADD CONSTRAINT {old_name} UNIQUE ({old_columns})"
        )
    for table in _ID_TABLES:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}, ADD CONSTRAINT pk_{table} PRIMARY KEY (id)"
        )
    op.execute(
        "ALTER TABLE notification_channel_state DROP CONSTRAINT pk_notification_channel_state, "
        "ADD CONSTRAINT pk_notification_channel_state PRIMARY KEY (channel_id, subject)"
    )
    op.execute("ALTER TABLE notification_channel_state DROP COLUMN project_id")
    for table, column, parent in _CHILD_FKS:
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_{column}_{parent} "
            f"FOREIGN KEY ({column}) REFERENCES {parent} (id) ON DELETE CASCADE"
        )
