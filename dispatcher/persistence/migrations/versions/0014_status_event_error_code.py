"""status_events.error_code: a failure's code as it happened

Issue 16: the error-code counters and the dashboard's error panel counted each
failure by its recipient's code as it stands now, so a retry (which clears it) made
a counter go down and showed a code called ``none``. Each status event now carries
the code its recipient had when it moved; the rollup counts those.

Events written before carry the code their recipient has at this upgrade: the best
record there is of what it had then.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 00:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("status_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error_code", sa.String(length=64), nullable=True))
    op.execute(
        """
        UPDATE status_events SET error_code = (
            SELECT r.error_code FROM recipients r WHERE r.id = status_events.recipient_id
        )
        WHERE to_status IN ('failed', 'unknown')
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("status_events", schema=None) as batch_op:
        batch_op.drop_column("error_code")
