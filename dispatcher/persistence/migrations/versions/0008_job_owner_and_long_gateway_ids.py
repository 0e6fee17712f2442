"""job owner key and gateway message IDs of any length

Two changes of issue 13 (security and hardening):

- ``jobs.owner_key_id``: the id of the API key that enqueued a job, so a producer
  key sees and acts on only its own jobs (docs/design.md section 3), indexed with the job id
  for its own newest-first listing. Existing jobs get their owner from
  ``created_by`` (``api:<name>`` or ``dropin:<name>``); key names are unique and
  never reused, so the match is exact.
- ``recipients.gateway_message_id`` becomes unbounded text: an accepted ID is
  stored exactly as the gateway sent it, whatever its length. Its index becomes a
  hash index on PostgreSQL (the search is by equality, and a B-tree entry over
  about 2.7 kB cannot be written); PostgreSQL changes varchar to text without
  rewriting the table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_key_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_jobs_owner_key_id_id"), ["owner_key_id", "id"], unique=False
        )
    op.execute(
        """
        UPDATE jobs SET owner_key_id = (
            SELECT k.id FROM api_keys k
            WHERE jobs.created_by = 'api:' || k.name OR jobs.created_by = 'dropin:' || k.name
        )
        WHERE created_by LIKE 'api:%' OR created_by LIKE 'dropin:%'
        """
    )

    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recipients_gateway_message_id"))
        batch_op.alter_column(
            "gateway_message_id",
            existing_type=sa.String(length=64),
            type_=sa.Text(),
            existing_nullable=True,
        )
        batch_op.create_index(
            batch_op.f("ix_recipients_gateway_message_id"),
            ["gateway_message_id"],
            unique=False,
            postgresql_using="hash",
        )


def downgrade() -> None:
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recipients_gateway_message_id"))
    # An ID longer than the old column cannot go back; keep its first 64 characters
    # rather than refuse the downgrade (the attempt's raw reply still holds it whole).
    op.execute(
        "UPDATE recipients SET gateway_message_id = substr(gateway_message_id, 1, 64) "
        "WHERE length(gateway_message_id) > 64"
    )
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.alter_column(
            "gateway_message_id",
            existing_type=sa.Text(),
            type_=sa.String(length=64),
            existing_nullable=True,
        )
        batch_op.create_index(
            batch_op.f("ix_recipients_gateway_message_id"), ["gateway_message_id"], unique=False
        )

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_owner_key_id_id"))
        batch_op.drop_column("owner_key_id")
