"""``keel.toml``, the app definition, loaded into typed configuration.

Relative paths in the file are resolved against the file's own folder, so an app works from
any current directory. Unknown keys are an error (a typo must not be silently ignored).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from keel.agents.params import ModelParams
from keel.errors import ConfigError
from keel.ops.cost import CostsSection

if TYPE_CHECKING:
    from keel.rag.pdf_budget import PdfBudget

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AppSection(_Strict):
    name: str = "keel-app"
    description: str = ""


class ModelSection(_Strict):
    id: str = "keel:extractive"
    fallbacks: list[str] = Field(default_factory=list)
    timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="The longest a whole reply may take (a slow local model is not a failed "
        "one: size it for the slowest model you serve).",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="The longest wait to connect to the model server."
    )
    first_token_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="The longest wait for a streamed reply's first token (the server reads "
        "the whole prompt first) and between two tokens.",
    )
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries (with backoff) on timeouts, 429 and 5xx."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens in one reply (sent as max_tokens to OpenAI-compatible "
        "servers). Set it for local models: one runaway answer holds a single-threaded server.",
    )
    stop: list[str] | None = Field(default=None, max_length=4)
    seed: int | None = None

    def params(self) -> ModelParams:
        """The per-call generation parameters this section sets."""
        return ModelParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop) if self.stop is not None else None,
            seed=self.seed,
        )


class HttpGetSection(_Strict):
    allowed_hosts: list[str] = Field(default_factory=list)
    max_bytes: int = Field(default=1_000_000, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)


class ToolsSection(_Strict):
    enabled: list[str] = Field(
        default_factory=list,
        description="Tools the model may call (the allowlist): 'module:function' or 'module' "
        "(every @tool in it) relative to keel.toml, or a built-in: 'keel:search_knowledge', "
        "'keel:calculator', 'keel:http_get'.",
    )
    http_get: HttpGetSection = Field(default_factory=HttpGetSection)


class AgentSection(_Strict):
    retrieve: bool = Field(default=True, description="Retrieve context before the model.")
    max_steps: int = Field(default=8, ge=1, le=100, description="Model calls per turn.")
    max_tool_calls: int = Field(default=16, ge=0, le=1000, description="Tool calls per turn.")
    max_tool_errors: int = Field(
        default=3, ge=1, le=100, description="Failed tool calls per turn before the run stops."
    )
    citation_threshold: float = Field(
        default=0.55,
        ge=-1,
        le=1,
        description="When a model cites no passage it was given, each answer sentence is "
        "attributed to the passages that support it at least this much (cosine similarity, "
        "as the grounding guard measures it).",
    )


GuardRules = dict[str, dict[str, Any]]


class GuardsSection(_Strict):
    """Which validators run at which hook point: ``[guards.<point>.<validator>]`` tables.

    Each table holds ``on_fail`` (exception, fix, filter, refrain, noop) and the validator's
    own options, e.g. ``[guards.input.injection] on_fail = "exception"``.
    """

    input: GuardRules = Field(default_factory=dict)
    context: GuardRules = Field(default_factory=dict)
    tool_args: GuardRules = Field(default_factory=dict)
    tool_result: GuardRules = Field(default_factory=dict)
    output: GuardRules = Field(default_factory=dict)
    message: str = Field(
        default="I can't help with that request.",
        description="What the user is told when a guard stops a turn.",
    )


class LimitsSection(_Strict):
    requests_per_minute: int = Field(default=60, ge=1, description="Per API key.")
    tokens_per_day: int = Field(default=1_000_000, ge=1, description="Model tokens per key.")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Request body cap.")
    max_upload_bytes: int = Field(default=20_000_000, ge=1024, description="Ingest upload cap.")
    max_message_chars: int = Field(default=8_000, ge=1, description="One chat message, in chars.")
    cors_origins: list[str] = Field(default_factory=list, description="Empty: CORS off.")


class TracingSection(_Strict):
    enabled: bool = Field(default=True, description="Spans into the keel database (and OTLP).")
    capture: Literal["off", "redacted", "full"] = Field(
        default="redacted",
        description="Inputs and outputs on spans: not at all, with PII and secrets redacted, "
        "or as they are.",
    )


class DeploySection(_Strict):
    """How the gateway serves releases (``keel release deploy``) and watches a canary."""

    refresh_s: float = Field(
        default=2.0, ge=0, description="How often the gateway re-reads which release serves."
    )
    auto_rollback: bool = Field(
        default=True, description="Roll a canary back when it is significantly worse."
    )
    min_sample: int = Field(
        default=50, ge=1, description="Canary observations a rate needs before it is judged."
    )
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Significance level (all rates together)."
    )
    margin: float = Field(
        default=0.02, ge=0, lt=1, description="How much worse a rate must be, at least."
    )
    check_interval_s: float = Field(
        default=30.0, ge=0, description="Seconds between the gateway's canary checks."
    )


class UiSection(_Strict):
    enabled: bool = Field(
        default=False,
        description="Serve the web console at /ui on the gateway (also `keel serve --ui`).",
    )


class CacheSection(_Strict):
    """The semantic cache (:mod:`keel.ops.cache`): off unless enabled."""

    enabled: bool = Field(
        default=False, description="Reuse answers to questions that mean the same."
    )
    threshold: float = Field(
        default=0.93,
        gt=0,
        le=1,
        description="Cosine similarity of the question embeddings at or above which a cached "
        "answer is served (measured by benchmarks/lifecycle.py).",
    )
    ttl_s: float = Field(default=86_400.0, gt=0, description="Seconds an entry is served.")
    max_entries: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Entries per partition (oldest go)."
    )


class GatewaySection(_Strict):
    """The OpenAI-compatible routes: what a client may add to a turn."""

    client_instructions: bool = Field(
        default=True,
        description="Client system/developer messages are added after the app's system "
        "prompt as delimited client instructions; false: refused with 400.",
    )
    client_tools: bool = Field(
        default=True,
        description="Request `tools` are offered to the model as client-executed tools (a "
        "call ends the turn and goes to the client, never runs here); false: refused with 400.",
    )


class ThreadsSection(_Strict):
    retention_days: float | None = Field(
        default=None, gt=0, description="Threads idle longer than this are deleted by prune."
    )


class RetentionSection(_Strict):
    """How long Keel keeps what it records; unset: kept until deleted by hand."""

    traces_days: float | None = Field(
        default=None, gt=0, description="Traces and their spans older than this are deleted."
    )
    feedback_days: float | None = Field(
        default=None, gt=0, description="Feedback older than this is deleted."
    )
    usage_days: float | None = Field(
        default=None, gt=0, description="Daily usage rows (tokens, cost per key) older than this."
    )
    cache_days: float | None = Field(
        default=None, gt=0, description="Semantic cache entries older than this."
    )
    threads_days: float | None = Field(
        default=None,
        gt=0,
        description="Threads idle longer than this (default: threads.retention_days).",
    )
    interval_s: float = Field(
        default=3600.0,
        ge=60,
        description="How often the gateway applies these periods (one instance at a time).",
    )


class PromptsSection(_Strict):
    system: str | None = None
    examples: str | None = None


class EmbeddingsSection(_Strict):
    model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="'all-MiniLM-L6-v2' (bundled, offline), a local model folder, or a model "
        "name already in the Hugging Face cache.",
    )
    backend: Literal["auto", "torch", "onnx"] = "auto"
    support: Literal["auto", "int8", "full"] = Field(
        default="auto",
        description="The encoder that scores how well retrieved passages support an answer's "
        "sentences (output grounding, citation attribution): 'int8' (an int8 copy of this "
        "model's ONNX export, about twice as fast), 'full' (the model as retrieval uses it), "
        "'auto' (int8 when the ONNX backend is in use).",
    )
    batch_size: int = Field(default=64, ge=1, le=4096)
    device: str = "cpu"
    allow_ungated: bool = Field(
        default=False,
        description='Use a tuned model (model = "tuned:<id>") that did not pass its gate.',
    )

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> EmbeddingsSection:
        if self.support == "int8" and self.backend == "torch":
            raise ValueError(
                'support = "int8" is an ONNX model: it needs backend = "onnx" or "auto" '
                '(or support = "full" on torch)'
            )
        return self


class RerankSection(_Strict):
    enabled: bool = Field(
        default=False, description="Rescore the best fused candidates with a cross-encoder."
    )
    model: str = Field(
        default="",
        description='The cross-encoder: "tuned:<id>" (made by keel tune reranker) or a local '
        "sentence-transformers CrossEncoder folder.",
    )
    candidates: int = Field(
        default=20, ge=1, le=1000, description="How many fused candidates it rescores."
    )
    batch_size: int = Field(default=32, ge=1, le=4096)
    allow_ungated: bool = Field(
        default=False, description="Use a tuned reranker that did not pass its gate."
    )

    @model_validator(mode="after")
    def _model_when_enabled(self) -> RerankSection:
        if self.enabled and not self.model.strip():
            raise ValueError("enabled = true needs model (keel tune reranker makes one)")
        return self


_RRF_K = 60
_DENSE_WEIGHT = 0.5


class RetrievalSection(_Strict):
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    k: int = Field(default=5, ge=1, le=1000)
    candidates: int = Field(default=50, ge=1, le=10000)
    rrf_k: int = Field(default=_RRF_K, ge=1, description='The constant of fusion = "rrf".')
    fusion: Literal["rrf", "convex"] = Field(
        default="rrf",
        description="How hybrid mode fuses its dense and BM25 lists: reciprocal rank fusion, "
        "or a convex combination of min-max normalised scores (dense_weight).",
    )
    dense_weight: float = Field(
        default=_DENSE_WEIGHT,
        ge=0,
        le=1,
        description='fusion = "convex": the dense list\'s weight (BM25 gets the rest).',
    )

    @model_validator(mode="after")
    def _fusion_settings(self) -> RetrievalSection:
        # A value other than its default is refused where it would do nothing (the default
        # itself is what a dumped config carries, so a dump validates again).
        if self.fusion == "rrf" and self.dense_weight != _DENSE_WEIGHT:
            raise ValueError('dense_weight applies to fusion = "convex" only (fusion is "rrf")')
        if self.fusion == "convex" and self.rrf_k != _RRF_K:
            raise ValueError('rrf_k applies to fusion = "rrf" only (fusion is "convex")')
        return self


class RagSection(_Strict):
    collection: str = "docs"
    root: str = "."
    paths: list[str] = Field(default_factory=lambda: ["docs"])
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    chunk_size: int = Field(default=1000, ge=50, le=100_000)
    chunk_overlap: int = Field(default=150, ge=0)
    max_file_mb: float = Field(default=20.0, gt=0)
    ingest_batch: int = Field(
        default=512, ge=1, le=100_000, description="Chunks embedded and committed per batch."
    )
    pdf_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds one PDF may take to parse."
    )
    pdf_max_pages: int = Field(default=2000, ge=1, description="Pages one PDF may have.")
    labels: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Access labels by folder: a glob over document ids (paths relative to the "
        'ingest root) to the labels its documents get, e.g. "internal/**" = ["staff"]. A '
        "document with labels is readable by keys holding any one of them.",
    )
    default_labels: list[str] = Field(
        default_factory=list,
        description="Labels of documents that get none otherwise (no metadata.labels, no rule, "
        "none on the ingest request). Empty: such documents are readable by every key.",
    )
    embeddings: EmbeddingsSection = Field(default_factory=EmbeddingsSection)
    retrieval: RetrievalSection = Field(default_factory=RetrievalSection)
    rerank: RerankSection = Field(default_factory=RerankSection)

    def pdf_budget(self) -> PdfBudget:
        """The per-document budget PDFs are parsed under (in a child process)."""
        from keel.rag.pdf_budget import PdfBudget

        return PdfBudget(timeout_s=self.pdf_timeout_s, max_pages=self.pdf_max_pages)

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        from keel.errors import UsageError
        from keel.rag.store import validate_collection_name

        try:
            return validate_collection_name(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None


class KeelConfig(_Strict):
    """The whole ``keel.toml``. ``base_dir`` is the folder the file is in."""

    app: AppSection = Field(default_factory=AppSection)
    model: ModelSection = Field(default_factory=ModelSection)
    prompts: PromptsSection = Field(default_factory=PromptsSection)
    rag: RagSection = Field(default_factory=RagSection)
    tools: ToolsSection = Field(default_factory=ToolsSection)
    agent: AgentSection = Field(default_factory=AgentSection)
    threads: ThreadsSection = Field(default_factory=ThreadsSection)
    guards: GuardsSection = Field(default_factory=GuardsSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    tracing: TracingSection = Field(default_factory=TracingSection)
    cache: CacheSection = Field(default_factory=CacheSection)
    costs: CostsSection = Field(default_factory=CostsSection)
    # How the app is served, not what it is: left out of model_dump, so of the app's version
    # hash and of release content (turning the console on, or changing the rollback policy,
    # changes no answer; the gateway reads both from the keel.toml it was started with).
    deploy: DeploySection = Field(default_factory=DeploySection, exclude=True)
    ui: UiSection = Field(default_factory=UiSection, exclude=True)
    gateway: GatewaySection = Field(default_factory=GatewaySection, exclude=True)
    retention: RetentionSection = Field(default_factory=RetentionSection, exclude=True)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def resolve(self, relative: str | Path) -> Path:
        """A path from the config, resolved against the config's folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def rag_root(self) -> Path:
        return self.resolve(self.rag.root).resolve()


def load_config(path: str | Path) -> KeelConfig:
    """Read and validate a ``keel.toml``; raises :class:`ConfigError` with the reason."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "keel.toml"
    if not file.is_file():
        raise ConfigError(f"no keel.toml at {file} (run `keel init DIR` to create an app)")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    return config_from_dict(raw, base_dir=file.resolve().parent, origin=str(file))


def config_from_dict(raw: dict[str, object], base_dir: Path, origin: str = "config") -> KeelConfig:
    """Validate a config mapping (the parsed TOML) into :class:`KeelConfig`."""
    try:
        return KeelConfig.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{origin}: {where}: {first['msg']}") from exc
