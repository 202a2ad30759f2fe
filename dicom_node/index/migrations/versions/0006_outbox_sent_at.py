"""outbox.sent_at: when a row was handed to an association; a pending row with it set is in doubt

Revision ID: 0006_outbox_sent_at
Revises: 0005_worker_health
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_outbox_sent_at"
down_revision = "0005_worker_health"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
