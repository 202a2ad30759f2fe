"""job.task_due_at: when a queued job's broker message is due, so a lost one is sent again

Revision ID: 0004_job_task_due
Revises: 0003_reader_study
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_job_task_due"
down_revision = "0003_reader_study"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("task_due_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("task_due_at")
