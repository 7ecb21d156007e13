"""Where chunk embeddings live: the :class:`VectorStore` protocol and its Chroma backend.

One backend, two deployments, the same code path:

- embedded (default): ``chromadb.PersistentClient`` on a directory under ``.keel/``;
- server: ``chromadb.HttpClient`` on a ``chroma run`` server (``KEEL_CHROMA_URL``).

Scores are cosine similarities (``1 - cosine distance``) in ``[-1, 1]``, higher is better.
Collections are created in cosine space with no Chroma embedding function (Keel embeds
itself) and record the embedding model and dimension they were built with, so an app cannot
silently query an index built with another model.

chromadb is imported lazily: importing this module does not import it. Chroma's anonymised
telemetry is switched off on every client made here.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from keel.errors import ConfigError, KeelError, StoreError, UsageError
from keel.rag.types import Chunk

if TYPE_CHECKING:
    import numpy as np
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = [
    "DEFAULT_MAX_BATCH",
    "ChromaStore",
    "VectorStore",
    "open_chroma_client",
    "validate_collection_name",
]

#: Batch size used when the backend cannot tell its own maximum.
DEFAULT_MAX_BATCH = 5000

#: Collection metadata keys where Keel records how the collection was built.
MODEL_KEY = "keel:embedding_model"
DIMENSION_KEY = "keel:dimension"

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


@runtime_checkable
class VectorStore(Protocol):
    """Where chunk embeddings live. Scores are cosine similarities in [-1, 1], higher is better."""

    name: str

    def upsert(self, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        """Insert or replace chunks by id (idempotent); batched under the backend's maximum."""
        ...

    def delete(self, ids: Sequence[str]) -> None:
        """Delete chunks by id; unknown ids are ignored."""
        ...

    def query(
        self, embedding: np.ndarray, k: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[Chunk, float]]:
        """The ``k`` nearest chunks (best first) with their cosine similarity."""
        ...

    def get(self, ids: Sequence[str]) -> list[Chunk]:
        """Chunks in the order of ``ids``; missing ones are left out."""
        ...

    def ids(self) -> set[str]:
        """Every chunk id in the store."""
        ...

    def count(self) -> int:
        """How many chunks the store holds."""
        ...

    def iter_chunks(self, batch_size: int = 1000) -> Iterator[Chunk]:
        """Every chunk, read ``batch_size`` at a time (for rebuilding a BM25 index)."""
        ...

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        ...


def validate_collection_name(name: str) -> str:
    """Check a collection name against Chroma's rules; raise :class:`UsageError` if it breaks them.

    3–512 characters of ``[a-zA-Z0-9._-]``, starting and ending with a letter or digit, no
    ``..`` and not an IPv4 address.
    """
    if (
        not isinstance(name, str)
        or not _NAME_RE.match(name)
        or ".." in name
        or _IPV4_RE.match(name)
    ):
        raise UsageError(
            f"collection name {name!r} is not valid: use 3-512 characters of [a-zA-Z0-9._-], "
            "starting and ending with a letter or digit, without '..', not an IP address"
        )
    return name


# --- clients ---------------------------------------------------------------------------------

_persistent_clients: dict[str, ClientAPI] = {}
_persistent_lock = threading.Lock()


def open_chroma_client(*, url: str | None, path: Path) -> ClientAPI:
    """A Chroma client: embedded on ``path`` when ``url`` is None, else on the server at ``url``.

    ``url`` is ``http(s)://host[:port][/]`` (port defaults to 8000 for http, 443 for https).
    A malformed URL raises :class:`ConfigError`; a server that cannot be reached raises
    :class:`StoreError` (the HTTP client connects when it is made). Embedded clients are shared
    per directory within the process, as Chroma wants one client per path.
    """
    if url is None:
        return _persistent_client(path)
    host, port, ssl = _parse_url(url)
    from chromadb import HttpClient
    from chromadb.config import Settings

    try:
        return HttpClient(
            host=host, port=port, ssl=ssl, settings=Settings(anonymized_telemetry=False)
        )
    except Exception as exc:  # connection refused, DNS, TLS, bad tenant: all "cannot reach"
        raise StoreError(f"cannot reach Chroma at {url}: {exc}") from exc


def _parse_url(url: str) -> tuple[str, int, bool]:
    bad = f"KEEL_CHROMA_URL {url!r} is not valid: expected http(s)://host:port"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{bad} ({exc})") from exc
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(bad)
    ssl = parts.scheme == "https"
    if port is None:
        port = 443 if ssl else 8000
    host = parts.hostname
    if ":" in host:  # IPv6 literal: keep the brackets for the URL Chroma builds
        host = f"[{host}]"
    return host, port, ssl


def _persistent_client(path: Path) -> ClientAPI:
    key = str(Path(path).expanduser().resolve())
    with _persistent_lock:
        client = _persistent_clients.get(key)
        if client is not None:
            return client
        import chromadb
        from chromadb.config import Settings

        try:
            Path(key).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the Chroma directory {key}: {exc}") from exc
        try:
            client = chromadb.PersistentClient(
                path=key, settings=Settings(anonymized_telemetry=False, allow_reset=False)
            )
        except ValueError as exc:  # another client on this path with other settings
            raise ConfigError(f"cannot open Chroma at {key}: {exc}") from exc
        except Exception as exc:
            raise StoreError(f"cannot open Chroma at {key}: {exc}") from exc
        _persistent_clients[key] = client
        return client


def _describe(client: ClientAPI) -> str:
    """Where a client points, for error messages."""
    try:
        settings = client.get_settings()
    except Exception:
        return "the configured location"
    if (settings.chroma_api_impl or "").endswith("FastAPI"):
        scheme = "https" if settings.chroma_server_ssl_enabled else "http"
        return f"{scheme}://{settings.chroma_server_host}:{settings.chroma_server_http_port}"
    return str(settings.persist_directory)


# --- the store -------------------------------------------------------------------------------


class ChromaStore:
    """A :class:`VectorStore` on one Chroma collection (embedded or server)."""

    def __init__(
        self, client: ClientAPI, name: str, *, embedding_model: str, dimension: int
    ) -> None:
        self.name = validate_collection_name(name)
        if not embedding_model:
            raise UsageError("embedding_model must not be empty")
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise UsageError(f"dimension must be a positive integer, got {dimension!r}")
        self.embedding_model = embedding_model
        self.dimension = dimension
        self._client = client
        self._location = _describe(client)
        self._collection = self._open()

    def __repr__(self) -> str:
        return f"ChromaStore(name={self.name!r}, at={self._location!r})"

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> Collection:
        from chromadb.errors import NotFoundError

        with self._errors("open the collection"):
            try:
                collection = self._client.get_collection(self.name, embedding_function=None)
            except NotFoundError:
                collection = self._create()
        self._check(collection)
        return collection

    def _create(self) -> Collection:
        from chromadb.errors import ChromaError

        try:
            return self._client.create_collection(
                self.name,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={MODEL_KEY: self.embedding_model, DIMENSION_KEY: self.dimension},
                embedding_function=None,
            )
        except ChromaError as exc:
            if "already exists" not in str(exc):
                raise
            # Another process created it in between: use theirs (checked by the caller).
            return self._client.get_collection(self.name, embedding_function=None)

    def _check(self, collection: Collection) -> None:
        meta = collection.metadata or {}
        model, dim = meta.get(MODEL_KEY), meta.get(DIMENSION_KEY)
        if model is None or dim is None:
            raise ConfigError(
                f"collection {self.name!r} at {self._location} was not created by Keel "
                f"(no {MODEL_KEY} in its metadata): use another collection name"
            )
        if model != self.embedding_model or dim != self.dimension:
            raise ConfigError(
                f"collection {self.name!r} was built with model {model} (dim {dim}); this app "
                f"uses {self.embedding_model} (dim {self.dimension}): re-ingest into a new "
                "collection or change rag.embeddings.model"
            )
        config = collection.configuration_json or {}
        space = None
        for index in ("hnsw", "spann"):
            section = config.get(index)
            if isinstance(section, Mapping) and section.get("space"):
                space = section["space"]
                break
        if space is not None and space != "cosine":
            raise ConfigError(
                f"collection {self.name!r} uses distance {space!r}; Keel needs 'cosine': "
                "re-ingest into a new collection"
            )

    # -- errors and batching ------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, where: Mapping[str, Any] | None = None) -> Iterator[None]:
        """Turn Chroma's and httpx's exceptions into Keel's."""
        import httpx
        from chromadb.errors import ChromaError, InvalidArgumentError, NotFoundError

        try:
            yield
        except KeelError:
            raise
        except httpx.TransportError as exc:
            raise StoreError(f"cannot reach Chroma at {self._location}: {exc}") from exc
        except NotFoundError as exc:
            raise StoreError(
                f"collection {self.name!r} does not exist at {self._location} (was it dropped?)"
            ) from exc
        except (InvalidArgumentError, ValueError) as exc:
            if "Could not connect" in str(exc):  # chromadb's wording for a refused connection
                raise StoreError(f"cannot reach Chroma at {self._location}: {exc}") from exc
            if where is not None:
                raise UsageError(f"invalid where filter {where!r}: {exc}") from exc
            raise UsageError(f"Chroma refused to {action}: {exc}") from exc
        except ChromaError as exc:
            raise StoreError(f"Chroma failed to {action} at {self._location}: {exc}") from exc
        except Exception as exc:
            if type(exc) is Exception:  # chromadb's bare error for an unexpected HTTP status
                raise StoreError(f"Chroma failed to {action} at {self._location}: {exc}") from exc
            raise

    def _batch_size(self) -> int:
        try:
            size = int(self._client.get_max_batch_size())
        except Exception:
            return DEFAULT_MAX_BATCH
        return size if size > 0 else DEFAULT_MAX_BATCH

    # -- VectorStore --------------------------------------------------------------------------

    def upsert(self, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        import numpy as np

        vectors = np.asarray(embeddings, dtype=np.float32)
        if not chunks:
            if vectors.size:
                raise UsageError("embeddings given for no chunks")
            return
        if vectors.ndim != 2 or vectors.shape != (len(chunks), self.dimension):
            raise UsageError(
                f"embeddings must have shape ({len(chunks)}, {self.dimension}), "
                f"got {tuple(vectors.shape)}"
            )
        ids = [c.id for c in chunks]
        if len(set(ids)) != len(ids):
            dups = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise UsageError(f"duplicate chunk ids in one upsert: {', '.join(dups[:5])}")
        step = self._batch_size()
        with self._errors("upsert chunks"):
            for lo in range(0, len(chunks), step):
                part = chunks[lo : lo + step]
                self._collection.upsert(
                    ids=ids[lo : lo + step],
                    embeddings=vectors[lo : lo + step],
                    documents=[c.text for c in part],
                    metadatas=[c.store_metadata() for c in part],
                )

    def delete(self, ids: Sequence[str]) -> None:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return
        step = self._batch_size()
        with self._errors("delete chunks"):
            for lo in range(0, len(unique), step):
                self._collection.delete(ids=unique[lo : lo + step])

    def query(
        self, embedding: np.ndarray, k: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[Chunk, float]]:
        import numpy as np

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"k must be a positive integer, got {k!r}")
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.ndim == 2 and vector.shape[0] == 1:
            vector = vector[0]
        if vector.shape != (self.dimension,):
            raise UsageError(
                f"query embedding must have dimension {self.dimension}, "
                f"got shape {tuple(vector.shape)}"
            )
        filt = self._where(where)
        with self._errors("query", where=filt):
            result = self._collection.query(
                query_embeddings=[vector.tolist()],
                n_results=k,
                where=filt,
                include=["documents", "metadatas", "distances"],
            )
        ids = result["ids"][0] if result["ids"] else []
        docs = result["documents"][0] if result["documents"] else []
        metas = result["metadatas"][0] if result["metadatas"] else []
        dists = result["distances"][0] if result["distances"] else []
        hits: list[tuple[Chunk, float]] = []
        for cid, doc, meta, dist in zip(ids, docs, metas, dists, strict=True):
            score = min(1.0, max(-1.0, 1.0 - float(dist)))
            hits.append((Chunk.from_store(cid, doc or "", dict(meta or {})), score))
        return hits

    @staticmethod
    def _where(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if where is None or (isinstance(where, Mapping) and not where):
            return None
        if not isinstance(where, Mapping):
            raise UsageError(f"invalid where filter {where!r}: it must be a mapping")
        from chromadb.api.types import validate_where

        filt = dict(where)
        try:
            validate_where(filt)
        except ValueError as exc:
            raise UsageError(f"invalid where filter {filt!r}: {exc}") from exc
        return filt

    def get(self, ids: Sequence[str]) -> list[Chunk]:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return []
        found: dict[str, Chunk] = {}
        step = self._batch_size()
        with self._errors("get chunks"):
            for lo in range(0, len(unique), step):
                result = self._collection.get(
                    ids=unique[lo : lo + step], include=["documents", "metadatas"]
                )
                found.update((chunk.id, chunk) for chunk in self._chunks(result))
        return [found[i] for i in ids if i in found]

    def ids(self) -> set[str]:
        out: set[str] = set()
        step = self._batch_size()
        offset = 0
        with self._errors("list chunk ids"):
            while True:
                page = self._collection.get(include=[], limit=step, offset=offset)["ids"]
                out.update(page)
                if len(page) < step:
                    return out
                offset += len(page)

    def count(self) -> int:
        with self._errors("count chunks"):
            return int(self._collection.count())

    def iter_chunks(self, batch_size: int = 1000) -> Iterator[Chunk]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        offset = 0
        while True:
            with self._errors("read chunks"):
                result = self._collection.get(
                    include=["documents", "metadatas"], limit=batch_size, offset=offset
                )
            page = self._chunks(result)
            yield from page
            if len(page) < batch_size:
                return
            offset += len(page)

    def iter_embedded(self, batch_size: int = 1000) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        """The collection's chunks with their vectors, a batch at a time (for a copy)."""
        import numpy as np

        offset = 0
        while True:
            with self._errors("read chunks"):
                result = self._collection.get(
                    include=["documents", "metadatas", "embeddings"],
                    limit=batch_size,
                    offset=offset,
                )
            page = self._chunks(result)
            if page:
                yield page, np.asarray(result["embeddings"], dtype=np.float32)
            if len(page) < batch_size:
                return
            offset += len(page)

    def drop(self) -> None:
        from chromadb.errors import NotFoundError

        with self._errors("drop the collection"), suppress(NotFoundError):
            self._client.delete_collection(self.name)

    @staticmethod
    def _chunks(result: Mapping[str, Any]) -> list[Chunk]:
        ids = result.get("ids") or []
        docs = result.get("documents") or [None] * len(ids)
        metas = result.get("metadatas") or [None] * len(ids)
        return [
            Chunk.from_store(cid, doc or "", dict(meta or {}))
            for cid, doc, meta in zip(ids, docs, metas, strict=True)
        ]
