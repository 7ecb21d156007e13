"""Alembic's environment for the keel database: run by ``keel db upgrade`` and
:func:`keel.db.ensure_schema` on the connection they pass in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from keel.db import VERSION_TABLE, load_all_tables

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=load_all_tables(),
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
