"""jobs.creation_implied: a recipient's first status event read from its row

Issue 15's write diet (docs/design.md section 3): a recipient accepted at enqueue is
written once when it is created. Its first status event (``queued``, caused by the
enqueue, by the job's creator, at its creation) says nothing its row and its job do
not, so jobs written from now on mark ``creation_implied`` and readers show the
event from the row. Jobs written before keep their events as rows (None).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("creation_implied", sa.Boolean(), nullable=True))


def downgrade() -> None:
    # Older code reads every first event from status_events: write the implied ones.
    op.execute(
        """
        INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause,
            actor, attempt_id)
        SELECT r.id, r.job_id, r.created_at, NULL, 'queued', 'enqueued', j.created_by, NULL
        FROM recipients r JOIN jobs j ON j.id = r.job_id
        WHERE j.creation_implied AND r.batch_id IS NOT NULL
        """
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("creation_implied")
