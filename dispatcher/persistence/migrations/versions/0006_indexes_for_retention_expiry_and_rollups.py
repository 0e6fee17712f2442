"""indexes for retention expiry and rollups

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 19:55:56.113834
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attempts_finished_at"), ["finished_at"], unique=False)

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index(
            "ix_batches_expiring",
            ["expires_at"],
            unique=False,
            postgresql_where=sa.text("status = 'queued' AND expires_at IS NOT NULL"),
            sqlite_where=sa.text("status = 'queued' AND expires_at IS NOT NULL"),
        )

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_unpurged",
            ["created_at"],
            unique=False,
            postgresql_where=sa.text("purged_at IS NULL"),
            sqlite_where=sa.text("purged_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_jobs_unpurged",
            postgresql_where=sa.text("purged_at IS NULL"),
            sqlite_where=sa.text("purged_at IS NULL"),
        )

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_batches_expiring",
            postgresql_where=sa.text("status = 'queued' AND expires_at IS NOT NULL"),
            sqlite_where=sa.text("status = 'queued' AND expires_at IS NOT NULL"),
        )

    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_finished_at"))
