"""reader study tables: studies, cases, cached candidates, per-reader presentations, answers

Revision ID: 0003_reader_study
Revises: 0002_job_heartbeat
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_reader_study"
down_revision = "0002_job_heartbeat"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reader_study",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("definition_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_reader_study_state", "reader_study", ["state"])
    op.create_table(
        "reader_study_case",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("reader_study.id"), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("scale_key", sa.String(16), nullable=False),
        sa.Column("instance_pk", sa.Integer(), sa.ForeignKey("instance.id"), nullable=False),
        sa.Column("crop_json", sa.String(128), nullable=False),
        sa.Column("truth_path", sa.Text(), nullable=False),
        sa.UniqueConstraint("study_id", "k", name="uq_reader_study_case_k"),
    )
    op.create_index("ix_reader_study_case_study_id", "reader_study_case", ["study_id"])
    op.create_table(
        "reader_study_candidate",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("reader_study_case.id"), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("array_path", sa.Text(), nullable=False),
        sa.Column("psnr_db", sa.Float(), nullable=True),
        sa.Column("ssim", sa.Float(), nullable=True),
        sa.UniqueConstraint("case_id", "model", name="uq_reader_study_candidate"),
    )
    op.create_index("ix_reader_study_candidate_case_id", "reader_study_candidate", ["case_id"])
    op.create_table(
        "reader_study_presentation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("reader_study.id"), nullable=False),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("reader_study_case.id"), nullable=False),
        sa.Column("reader", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("order_json", sa.Text(), nullable=False),
        sa.UniqueConstraint("case_id", "reader", name="uq_reader_study_presentation"),
    )
    op.create_index("ix_reader_study_presentation_study_id", "reader_study_presentation", ["study_id"])
    op.create_index("ix_reader_study_presentation_seq", "reader_study_presentation",
                    ["study_id", "reader", "position"])
    op.create_table(
        "reader_study_answer",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("reader_study.id"), nullable=False),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("reader_study_case.id"), nullable=False),
        sa.Column("reader", sa.String(64), nullable=False),
        sa.Column("ranking_json", sa.Text(), nullable=False),
        sa.Column("display_order_json", sa.Text(), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seconds_on_case", sa.Float(), nullable=True),
    )
    op.create_index("ix_reader_study_answer_study_id", "reader_study_answer", ["study_id"])
    op.create_index("ix_reader_study_answer_case_id", "reader_study_answer", ["case_id"])
    op.create_index("ix_reader_study_answer_reader", "reader_study_answer", ["reader"])


def downgrade() -> None:
    for table in ("reader_study_answer", "reader_study_presentation", "reader_study_candidate",
                  "reader_study_case", "reader_study"):
        op.drop_table(table)
