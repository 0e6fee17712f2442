"""dispatch_control.unknown_acknowledged_at: the UnknownRecipients alert clears when
an operator has seen the unknown recipients so far

Issue 16: the alert counted every `unknown` recipient ever and fired forever. It now
counts those that became `unknown` after this time (``sms_dispatcher_unknown_
unacknowledged``), which settling or an acknowledgement brings to zero
(docs/operating.md, "Settle").

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dispatch_control", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unknown_acknowledged_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("dispatch_control", schema=None) as batch_op:
        batch_op.drop_column("unknown_acknowledged_at")
