"""batches, recipients and attempts without foreign keys

The dispatch path's tables lose their foreign keys, as status events did in 0007
(docs/design.md, "Integrity without foreign keys"). Each row is written only by the
statement or transaction that writes, or has just locked, the row it names: a job's
batches and recipients with the job itself (``store.enqueue``), an attempt by the
claim that holds its batch (``store.claims``); and nothing deletes jobs, batches,
recipients or attempts (retention and erasure blank their text and numbers). The
checks proved nothing those writers do not, and cost PostgreSQL about a sixth of its
CPU on the bulk benchmark (issue 15: two key lookups per recipient enqueued, each an
SPI query that also locked the job's one row again). The indexes stay.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 23:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# (table, column, referred table, on delete), as 0001 made them.
_KEYS = (
    ("batches", "job_id", "jobs", "CASCADE"),
    ("recipients", "job_id", "jobs", "CASCADE"),
    ("recipients", "batch_id", "batches", "SET NULL"),
    ("attempts", "batch_id", "batches", "CASCADE"),
    ("attempts", "job_id", "jobs", "CASCADE"),
)


def upgrade() -> None:
    for table in ("batches", "recipients", "attempts"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, column, referred, _ in _KEYS:
                if name == table:
                    batch_op.drop_constraint(
                        batch_op.f(f"fk_{table}_{column}_{referred}"), type_="foreignkey"
                    )


def downgrade() -> None:
    for table in ("batches", "recipients", "attempts"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, column, referred, on_delete in _KEYS:
                if name == table:
                    batch_op.create_foreign_key(
                        batch_op.f(f"fk_{table}_{column}_{referred}"),
                        referred,
                        [column],
                        ["id"],
                        ondelete=on_delete,
                    )
