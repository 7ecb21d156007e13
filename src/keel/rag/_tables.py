"""The knowledge pipeline's tables in the keel database (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from keel.db import metadata

# One row per ingested document: the manifest. chunk_ids is a JSON list.
documents = Table(
    "keel_documents",
    metadata,
    Column("collection", String(512), primary_key=True),
    Column("doc_id", String(1024), primary_key=True),
    Column("source", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("chunk_ids", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # the API key that created the document (None: the app's own files, the CLI, Python)
    Column("created_by", String(64)),
)

# One row per ingestion; a row left in state "running" means the run was interrupted.
ingest_runs = Table(
    "keel_ingest_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("collection", String(512), nullable=False, index=True),
    Column("state", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("index_version", String(64)),
    Column("summary", Text),
)

# Embeddings by model and text hash, so unchanged text is never embedded twice.
embedding_cache = Table(
    "keel_embedding_cache",
    metadata,
    Column("model", String(512), primary_key=True),
    Column("text_hash", String(64), primary_key=True),
    Column("vector", LargeBinary, nullable=False),
)
