"""job.noise_ratio, job.edge_ratio, job.quality, job.held: the noise guard's figures and hold flag

Revision ID: 0008_job_noise_guard
Revises: 0007_retention
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_job_noise_guard"
down_revision = "0007_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # outbox.state gains the value "held"; it is a non-native enum without a CHECK constraint.
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("noise_ratio", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("edge_ratio", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("quality", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("held", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("held")
        batch_op.drop_column("quality")
        batch_op.drop_column("edge_ratio")
        batch_op.drop_column("noise_ratio")
