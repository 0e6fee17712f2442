"""the claim recorded per submission, and only the recipient indexes reads need

Issue 15's write diet (docs/design.md section 3):

- ``attempts.claimed``: the recipients a submission carries, with the status each
  had, as JSON. The claim writes this one row instead of moving every recipient to
  ``submitting`` with a status event each; readers show ``submitting`` through the
  batch. Older attempts keep None: their claims are status events already.
- ``recipients(status, updated_at)`` becomes a partial index over the statuses
  operators list (``retry_wait``, ``failed``, ``unknown``): queued and sent rows,
  nearly all of them, no longer write an entry there at enqueue and at every reply.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ATTENTION = "status IN ('retry_wait', 'failed', 'unknown')"


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed", sa.Text(), nullable=True))
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recipients_status_updated_at"))
        batch_op.create_index(
            "ix_recipients_attention",
            ["status", "updated_at"],
            unique=False,
            postgresql_where=sa.text(_ATTENTION),
            sqlite_where=sa.text(_ATTENTION),
        )


def downgrade() -> None:
    # The older code reads a recipient in flight by its own status: write it. The
    # claims of finished attempts stay in their attempts' rows only (dropped below),
    # so the history older code shows lacks their submitting step.
    op.execute(
        """
        UPDATE recipients SET status = 'submitting'
        WHERE status IN ('queued', 'retry_wait')
            AND batch_id IN (SELECT id FROM batches WHERE status = 'submitting')
        """
    )
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_recipients_attention",
            postgresql_where=sa.text(_ATTENTION),
            sqlite_where=sa.text(_ATTENTION),
        )
        batch_op.create_index(
            batch_op.f("ix_recipients_status_updated_at"), ["status", "updated_at"], unique=False
        )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("claimed")
