"""Ingestion jobs hold their work (payload) and count their starts (attempts), so any worker
can run them and a job whose worker died starts again.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database made from a newer baseline already has them (0002 creates the table whole)
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("keel_ingest_jobs")}
    if "payload" not in have:
        op.add_column("keel_ingest_jobs", sa.Column("payload", sa.Text(), nullable=True))
    if "attempts" not in have:
        op.add_column(
            "keel_ingest_jobs",
            sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        )
