"""series.protected, series.recycling_at, series.recycled_at: retention and quota recycling

Revision ID: 0007_retention
Revises: 0006_outbox_sent_at
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_retention"
down_revision = "0006_outbox_sent_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("protected", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("recycling_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("recycled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_series_recycling_at", ["recycling_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index("ix_series_recycling_at")
        batch_op.drop_column("recycled_at")
        batch_op.drop_column("recycling_at")
        batch_op.drop_column("protected")
