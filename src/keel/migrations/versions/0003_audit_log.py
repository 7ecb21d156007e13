"""The audit log (keel_audit): append-only, hash-chained.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from keel.db import load_all_tables

    metadata = load_all_tables()
    metadata.create_all(op.get_bind(), tables=[metadata.tables["keel_audit"]], checkfirst=True)
