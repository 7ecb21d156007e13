"""Baseline: the keel schema as the last release before migrations left it.

Databases made by earlier releases already hold some of these tables (created on first use),
some with fewer columns (the trace store's ``release_id`` and ``cache_hit``, the manifest's
``created_by`` came later, added in place). This revision creates what is missing and adds
the missing nullable columns, keeping every row.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# the tables of that release (the new ones of later revisions are not made here)
TABLES = (
    "keel_api_keys",
    "keel_deployments",
    "keel_documents",
    "keel_drift_checks",
    "keel_embedding_cache",
    "keel_eval_runs",
    "keel_feedback",
    "keel_ingest_runs",
    "keel_judge_cache",
    "keel_ready_probe",
    "keel_release_events",
    "keel_releases",
    "keel_schema_versions",
    "keel_semantic_cache",
    "keel_spans",
    "keel_threads",
    "keel_traces",
    "keel_usage",
)


def upgrade() -> None:
    from keel.db import load_all_tables

    metadata = load_all_tables()
    bind = op.get_bind()
    tables = [metadata.tables[name] for name in TABLES if name in metadata.tables]
    metadata.create_all(bind, tables=tables, checkfirst=True)
    inspector = sa.inspect(bind)
    for table in tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable and not column.primary_key:
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
