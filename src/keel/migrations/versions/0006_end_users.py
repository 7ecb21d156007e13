"""The end user (the person a turn is for) on threads, traces and semantic cache entries, for
export and erasure (keel privacy).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("keel_threads", "keel_traces", "keel_semantic_cache")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in TABLES:
        if table not in inspector.get_table_names():
            continue  # made whole, with the column, when first used
        if "end_user" in {c["name"] for c in inspector.get_columns(table)}:
            continue  # a database made from a newer baseline
        op.add_column(table, sa.Column("end_user", sa.String(256), nullable=True))
        op.create_index(f"ix_{table}_end_user", table, ["end_user"])
