"""status events without foreign keys

The history is append-only and written by the statement that moves each recipient,
from rows it has just locked; nothing deletes jobs, recipients or attempts. The
three key checks per event cost PostgreSQL about a third of its CPU on the bulk
benchmark (issue 7): each one locked the job's single row again for every
recipient of a batch. The indexes stay.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 22:19:08.837170
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("status_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_status_events_job_id_jobs"), type_="foreignkey")
        batch_op.drop_constraint(
            batch_op.f("fk_status_events_attempt_id_attempts"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_status_events_recipient_id_recipients"), type_="foreignkey"
        )


def downgrade() -> None:
    with op.batch_alter_table("status_events", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_status_events_recipient_id_recipients"),
            "recipients",
            ["recipient_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_status_events_attempt_id_attempts"),
            "attempts",
            ["attempt_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_status_events_job_id_jobs"),
            "jobs",
            ["job_id"],
            ["id"],
            ondelete="CASCADE",
        )
