"""scheduling lanes expiry heartbeats rollups retention

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 19:15:28.612075
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stats_minutes",
        sa.Column("bucket_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("bucket_at", "name", "label", name=op.f("pk_stats_minutes")),
    )
    with op.batch_alter_table("stats_minutes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stats_minutes_name_bucket_at"), ["name", "bucket_at"], unique=False
        )

    op.create_table(
        "status_counts",
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("recipients", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("status", name=op.f("pk_status_counts")),
    )
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("batches", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_heartbeats")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_senders", sa.String(length=1000), nullable=True))

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lane", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_index(batch_op.f("ix_batches_due"), sqlite_where=sa.text("status = 'queued'"))
        batch_op.create_index(
            "ix_batches_due",
            ["lane", "due_at"],
            unique=False,
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("send_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("priority", sa.String(length=8), server_default="normal", nullable=False)
        )
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("priority")
        batch_op.drop_column("send_at")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_batches_due",
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )
        batch_op.create_index(
            "ix_batches_due",
            ["due_at"],
            unique=False,
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )
        batch_op.drop_column("expires_at")
        batch_op.drop_column("lane")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("allowed_senders")

    op.drop_table("worker_heartbeats")
    op.drop_table("status_counts")
    with op.batch_alter_table("stats_minutes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stats_minutes_name_bucket_at"))

    op.drop_table("stats_minutes")
