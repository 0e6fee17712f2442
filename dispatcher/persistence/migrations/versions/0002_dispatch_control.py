"""dispatch control: pause state and circuit breaker

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 16:59:43.005581
"""

from __future__ import annotations

import datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    control = op.create_table(
        "dispatch_control",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pause_reason", sa.String(length=20), nullable=True),
        sa.Column("pause_detail", sa.String(length=500), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused_by", sa.String(length=200), nullable=True),
        sa.Column("breaker_state", sa.String(length=10), nullable=False),
        sa.Column("breaker_failures", sa.Integer(), nullable=False),
        sa.Column("breaker_trips", sa.Integer(), nullable=False),
        sa.Column("breaker_opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("breaker_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("credit_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_balance", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_control")),
    )
    # The one row every worker reads; dispatch starts running, breaker closed.
    op.bulk_insert(
        control,
        [
            {
                "id": 1,
                "paused": False,
                "breaker_state": "closed",
                "breaker_failures": 0,
                "breaker_trips": 0,
                "updated_at": datetime.datetime.now(datetime.UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("dispatch_control")
