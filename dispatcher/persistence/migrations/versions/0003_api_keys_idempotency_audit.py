"""api keys, idempotency, reference, operator audit

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 17:25:53.453591
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_keys_token_hash")),
    )
    op.create_table(
        "operator_actions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("affected", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_actions")),
    )
    with op.batch_alter_table("operator_actions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operator_actions_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_operator_actions_target"), ["target"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Jobs enqueued before keys existed came from Python or the CLI.
        batch_op.add_column(
            sa.Column("created_by", sa.String(length=200), nullable=False, server_default="python")
        )
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reference", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("callback_url", sa.String(length=2000), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_reference"), ["reference"], unique=False)
        batch_op.create_unique_constraint(
            batch_op.f("uq_jobs_created_by_idempotency_key"), ["created_by", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_jobs_created_by_idempotency_key"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_jobs_reference"))
        batch_op.drop_column("callback_url")
        batch_op.drop_column("reference")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("created_by")

    with op.batch_alter_table("operator_actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operator_actions_target"))
        batch_op.drop_index(batch_op.f("ix_operator_actions_at"))

    op.drop_table("operator_actions")
    op.drop_table("api_keys")
