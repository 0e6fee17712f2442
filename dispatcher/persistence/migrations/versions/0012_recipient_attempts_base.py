"""recipients.attempts_base: attempts counted across an operator's retries

Issue 16: a retry no longer resets a recipient's attempt count to 0, so its history
and its count keep increasing; ``attempts_base`` holds the count at the latest
retry, and the retry limit (``DISPATCHER_MAX_ATTEMPTS``) applies to the attempts
made since (docs/operating.md, "Retry").

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 23:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempts_base", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    # Older code reset the count at a retry: the attempts since the latest one.
    op.execute("UPDATE recipients SET attempts = attempts - attempts_base")
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_column("attempts_base")
