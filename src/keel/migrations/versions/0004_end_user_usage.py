"""Usage per end user (keel_usage_end_users): OpenAI's ``user`` / ``safety_identifier``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from keel.db import load_all_tables

    metadata = load_all_tables()
    table = metadata.tables["keel_usage_end_users"]
    metadata.create_all(op.get_bind(), tables=[table], checkfirst=True)
