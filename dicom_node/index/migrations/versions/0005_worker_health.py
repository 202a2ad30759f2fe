"""worker table (health of each worker), node_setting (storage identity), job.last_failed_worker

Revision ID: 0005_worker_health
Revises: 0004_job_task_due
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_worker_health"
down_revision = "0004_job_task_due"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("models", sa.Text(), nullable=False),
        sa.Column("state", sa.Enum("ok", "refusing", "stopped", name="workerstate", native_enum=False, length=16),
                  nullable=False),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_worker_state", "worker", ["state"])
    op.create_index("ix_worker_last_seen_at", "worker", ["last_seen_at"])
    op.create_table(
        "node_setting",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_failed_worker", sa.String(length=255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("last_failed_worker")
    op.drop_table("node_setting")
    op.drop_index("ix_worker_last_seen_at", table_name="worker")
    op.drop_index("ix_worker_state", table_name="worker")
    op.drop_table("worker")
