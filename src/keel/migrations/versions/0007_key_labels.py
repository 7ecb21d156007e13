"""The access labels an API key may read (document access control, keel.rag.access).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "keel_api_keys" not in inspector.get_table_names():
        return  # made whole, with the column, when first used
    if "labels" in {c["name"] for c in inspector.get_columns("keel_api_keys")}:
        return  # a database made from a newer baseline
    # existing keys read unlabelled documents only, as a key created without --labels does
    op.add_column(
        "keel_api_keys", sa.Column("labels", sa.Text(), nullable=False, server_default="")
    )
