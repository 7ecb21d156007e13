"""Process settings: the only module that reads environment variables.

Everything in Keel receives typed values from here (or from :mod:`keel.config`, the app's
``keel.toml``); nothing else looks at ``os.environ``. Every setting is ``KEEL_<NAME>``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """``KEEL_*`` environment settings. Unset means "embedded default"."""

    model_config = SettingsConfigDict(env_prefix="KEEL_", extra="ignore")

    config: Path | None = Field(
        default=None, description="Path of keel.toml when the CLI is not given --config."
    )
    data_dir: Path | None = Field(
        default=None, description="Where Keel keeps its state; default: .keel beside keel.toml."
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "keel",
        description="Where derived model files (the ONNX export of an embedding model) are kept.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of a shared database (Postgres); default SQLite."
    )
    chroma_url: str | None = Field(
        default=None, description="URL of a Chroma server (http://host:port); default embedded."
    )
    redis_url: str | None = Field(default=None, description="Redis URL for shared rate limits.")
    openai_base_url: str | None = Field(
        default=None, description="Base URL of an OpenAI-compatible server for openai:* models."
    )
    openai_api_key: str | None = Field(
        default=None, description="API key for openai:* models (else the library's own lookup)."
    )
    openai_structured_output: Literal["json_schema", "json_object_schema", "none"] = Field(
        default="json_schema",
        description="How the OpenAI-compatible server is asked for JSON that fits a schema "
        "(judges, structured output): 'json_schema' (OpenAI, vLLM, Ollama, llama.cpp's "
        "llama-server), 'json_object_schema' (llama-cpp-python's server) or 'none'.",
    )
    otlp_endpoint: str | None = Field(default=None, description="OTLP endpoint for span export.")
    ui: bool = Field(
        default=False, description="Serve the web console at /ui (as `keel serve --ui`)."
    )
    git_commit: str | None = Field(
        default=None, description="The commit the app runs from (else read with git)."
    )
    embedded_worker: bool = Field(
        default=True,
        description="`keel serve` runs a worker for ingestion jobs in its own process; false "
        "when `keel worker` processes run them.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process settings, read once."""
    return Settings()


def offline_defaults() -> None:
    """Set the environment switches that keep third-party libraries offline and quiet.

    Keel never reads these back; they are for the libraries it loads (Hugging Face, RAGAS,
    tokenizers). A value the user set explicitly is kept.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    # guardrails-ai: validate in the calling thread (its async service spins up an event loop
    # per call, about 3 ms) and never send hub metrics (also switched off per Guard).
    os.environ.setdefault("GUARDRAILS_RUN_SYNC", "true")
