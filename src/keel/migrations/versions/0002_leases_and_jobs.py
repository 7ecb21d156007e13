"""Leases (one holder per thread across instances) and ingestion jobs in the database.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from keel.db import load_all_tables

    metadata = load_all_tables()
    tables = [metadata.tables["keel_leases"], metadata.tables["keel_ingest_jobs"]]
    metadata.create_all(op.get_bind(), tables=tables, checkfirst=True)
