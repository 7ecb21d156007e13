from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from keel.db import make_engine
from keel.errors import ConfigError
from keel.rag._onnx_short import Features, short_encoder
from keel.rag.embeddings import (
    QUANTIZED_FILE,
    QUANTIZED_SUFFIX,
    Embedder,
    EmbeddingCache,
    onnx_available,
    resolve_model,
)
from keel.rag.types import content_hash


@pytest.fixture
def embedder(tmp_path: Path, model_cache_dir: Path) -> Embedder:
    cache = EmbeddingCache(make_engine(None, tmp_path))
    return Embedder(cache=cache, cache_dir=model_cache_dir)


def test_bundled_model_loads_offline_and_embeds_normalised_vectors(embedder: Embedder) -> None:
    vectors = embedder.embed_documents(["The cat sat on the mat.", "Quarterly revenue grew."])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    near = embedder.embed_query("A kitten is sitting on a rug.")
    assert float(near @ vectors[0]) > float(near @ vectors[1]) + 0.2


def test_unchanged_text_is_never_embedded_twice(embedder: Embedder) -> None:
    first = embedder.embed_documents(["alpha text", "beta text", "alpha text"])
    assert embedder.encoded == 2  # the duplicate inside one call is embedded once
    again = embedder.embed_documents(["beta text", "gamma text", "alpha text"])
    assert embedder.encoded == 3  # only "gamma text" is new
    assert np.allclose(again[0], first[1]) and np.allclose(again[2], first[0])


def test_the_query_cache_can_be_listed_and_texts_forgotten(embedder: Embedder) -> None:
    assert embedder.cached_queries() == frozenset()
    embedder.embed_queries(["first query", "second query"])
    embedder.embed_sentences(["A passage sentence."])  # a cache of its own
    held = embedder.cached_queries()
    assert held == {"first query", "second query"}
    embedder.embed_query("third query")
    assert held == {"first query", "second query"}  # a snapshot
    embedder.forget_queries(["second query", "never embedded"])
    assert embedder.cached_queries() == {"first query", "third query"}
    before = embedder.encoded
    embedder.embed_queries(["first query", "second query"])
    assert embedder.encoded - before == 1  # only the forgotten text is embedded again
    embedder.forget_queries(iter(["first query"]))  # any iterable
    assert embedder.cached_queries() == {"second query", "third query"}


def test_embedders_over_one_model_share_its_lock(tmp_path: Path, model_cache_dir: Path) -> None:
    """Embedders over one loaded model (two apps, or an app and its release, on one gateway)
    share the model, so they share the lock its tokenizer needs: with one lock each, two
    threads could use the one fast tokenizer at once ("Already borrowed")."""
    a = Embedder(cache_dir=model_cache_dir)
    b = Embedder(cache=EmbeddingCache(make_engine(None, tmp_path)), cache_dir=model_cache_dir)
    assert a.model is b.model
    assert a.tokenizer_lock is b.tokenizer_lock
    other = Embedder(cache_dir=tmp_path / "elsewhere")  # another copy: a lock of its own
    assert other.tokenizer_lock is not a.tokenizer_lock


def test_cache_is_keyed_by_model(tmp_path: Path) -> None:
    cache = EmbeddingCache(make_engine(None, tmp_path))
    cache.put_many("model-a", {"h1": np.ones(3, dtype=np.float32)})
    cache.put_many("model-a", {"h1": np.zeros(3, dtype=np.float32)})  # first write wins
    assert np.allclose(cache.get_many("model-a", ["h1", "h2"])["h1"], 1.0)
    assert cache.get_many("model-b", ["h1"]) == {}


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/optimum not installed")
def test_onnx_and_torch_backends_agree(model_cache_dir: Path) -> None:
    texts = ["Short.", "A somewhat longer sentence about retrieval augmented generation."]
    onnx = Embedder(backend="onnx", cache_dir=model_cache_dir).encode(texts)
    torch = Embedder(backend="torch").encode(texts)
    assert np.allclose(onnx, torch, atol=1e-4)
    # the export is kept for the next process
    assert any(model_cache_dir.glob("onnx/*/onnx/model.onnx"))


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/optimum not installed")
def test_short_texts_go_through_an_onnx_model_one_per_call(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = EmbeddingCache(make_engine(None, tmp_path))
    onnx = Embedder(backend="onnx", cache=cache, cache_dir=model_cache_dir)
    assert Embedder(backend="torch").short_batch_size == 64  # torch keeps its batches
    texts = ["Refunds take five days.", "Short.", "A much longer claim about a refund policy."]
    batched = onnx.encode(texts)  # one padded batch
    calls: list[int] = []
    model_encode = onnx.model.encode

    def spy(sentences: list[str], **kwargs: object) -> object:
        calls.append(int(str(kwargs["batch_size"])))
        return model_encode(sentences, **kwargs)  # type: ignore[arg-type]

    short = onnx._short_encoder()
    assert short is not None
    runs: list[int] = []
    short_run = short.run

    def run_spy(features: Features) -> object:
        runs.append(int(features["input_ids"].shape[0]))
        return short_run(features)

    monkeypatch.setattr(onnx.model, "encode", spy)
    monkeypatch.setattr(short, "run", run_spy)
    claims = onnx.embed_queries(texts)
    sentences = onnx.embed_sentences(["Passage one.", "Passage sentence two is longer."])
    documents = onnx.embed_documents(["A chunk of a document.", "Another chunk."])
    # claims and passage sentences one at a time, straight to the session; chunks batched
    assert runs == [1] * 5 and calls == [64]
    onnx.direct_onnx = False  # through sentence-transformers' encode, still one per call
    onnx.clear_query_cache()
    onnx.embed_queries(["A claim not seen before."])
    assert calls == [64, 1] and len(runs) == 5
    # the same vectors as the padded batch (the attention mask hides the padding)
    assert np.allclose(claims, batched, atol=1e-5)
    assert sentences.shape == documents.shape == (2, 384)
    assert cache.get_many(onnx.model_id, [content_hash("Passage one.")])  # written through


def test_model_resolution_and_errors(tmp_path: Path) -> None:
    model_id, where = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert model_id == "all-MiniLM-L6-v2" and Path(where, "modules.json").exists()
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ConfigError):
        resolve_model(str(tmp_path / "not-a-model"))
    with pytest.raises(ConfigError, match="offline"):
        _ = Embedder("no-such-org/no-such-model-xyz", backend="torch").dimension
    with pytest.raises(ConfigError):
        Embedder(backend="tensorflow")


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/optimum not installed")
def test_quantized_embedder_is_close_to_the_float_model_under_its_own_id(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    texts = [
        "Refunds are possible within 30 days of the purchase.",
        "Two-factor authentication is turned on in the security settings.",
        "Quarterly revenue grew by four percent.",
    ]
    cache = EmbeddingCache(make_engine(None, tmp_path))
    full = Embedder(cache=cache, cache_dir=model_cache_dir)
    int8 = Embedder(cache=cache, cache_dir=model_cache_dir, quantized=True)
    assert int8.model_id == "all-MiniLM-L6-v2" + QUANTIZED_SUFFIX != full.model_id
    a, b = full.embed_documents(texts), int8.embed_documents(texts)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(a * b, axis=1)
    assert cosine.min() > 0.9 and not np.allclose(a, b, atol=1e-4)  # close, not the same
    # each text is still nearest to its own float vector
    assert list((b @ a.T).argmax(axis=1)) == [0, 1, 2]
    # cached apart: the float model's entries never serve the int8 model, nor the reverse
    assert set(cache.get_many(int8.model_id, [content_hash(t) for t in texts])) == {
        content_hash(t) for t in texts
    }
    # the int8 export is kept in the cache folder for the next process
    assert any(model_cache_dir.glob(f"onnx/*/onnx/{QUANTIZED_FILE}"))
    with pytest.raises(ConfigError, match="onnx backend"):
        Embedder(backend="torch", quantized=True)


WRITER = """
import sys, time
from collections.abc import Sequence
from pathlib import Path
import numpy as np
from keel.db import make_engine
from keel.rag.embeddings import EmbeddingCache
url, data, model, go = sys.argv[1] or None, Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
cache = EmbeddingCache(make_engine(url, data))
while not go.exists():
    time.sleep(0.001)
for r in range(60):  # the same new texts in both processes, round after round
    cache.put_many(model, {f"{r}-{i}": np.full(4, i, dtype=np.float32) for i in range(40)})
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_processes_caching_the_same_texts_both_succeed(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgres" else ""
    data, go = tmp_path / ".keel", tmp_path / "go"
    cache = EmbeddingCache(make_engine(url or None, data))  # the table exists before both start
    model = f"race-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(data), model, str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(3)  # both imported and waiting
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    found = cache.get_many(model, [f"{r}-{i}" for r in range(60) for i in range(40)])
    assert len(found) == 60 * 40 and np.allclose(found["7-3"], 3.0)


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/optimum not installed")
@pytest.mark.parametrize("quantized", [False, True])
def test_direct_onnx_path_gives_encodes_vectors(model_cache_dir: Path, quantized: bool) -> None:
    texts = [
        "  Refunds take 30 days.  ",
        "",
        "x",
        "Ünïcödé text, with dashes and an emoji 🎉",
        "word " * 400,  # over the model's 256 tokens: truncated the same way
        "SSO?\n\nWith\ttabs",
    ]
    embedder = Embedder(cache_dir=model_cache_dir, quantized=quantized)
    direct = embedder.encode_short(texts)
    embedder.direct_onnx = False
    through_encode = embedder.encode_short(texts)
    assert direct.dtype == np.float32 and direct.shape == (len(texts), 384)
    assert np.allclose(direct, through_encode, atol=1e-6)
    # the same ids as the model's transformers tokenizer, truncation included
    embedder.direct_onnx = True
    short = embedder._short_encoder()
    assert short is not None
    transformer = embedder.model[0]
    for text in texts:
        wanted = transformer.tokenizer(
            [text], truncation=True, max_length=transformer.max_seq_length, return_tensors="np"
        )
        got = short.tokenize(text)
        assert set(got) == set(short.inputs)
        for name, ids in got.items():
            assert ids.dtype == np.int64 and ids.tolist() == wanted[name].tolist(), name
    # several threads at once (neither the tokenizer nor the session is locked) give the
    # same vectors
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda t: embedder.encode_short([t])[0], texts * 5))
    assert np.allclose(np.vstack(rows), np.vstack([direct] * 5), atol=1e-6)


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/optimum not installed")
def test_direct_onnx_path_only_for_a_mean_pooled_onnx_model(model_cache_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling

    onnx = Embedder(backend="onnx", cache_dir=model_cache_dir).model
    assert short_encoder(onnx) is not None
    dim = 384
    cls = SentenceTransformer(modules=[onnx[0], Pooling(dim, pooling_mode="cls"), Normalize()])
    assert short_encoder(cls) is None  # another pooling: encode keeps it
    assert short_encoder(SentenceTransformer(modules=[onnx[0]])) is None  # no pooling at all
    torch = Embedder(backend="torch")
    assert torch._short_encoder() is None
    assert torch.encode_short(["One.", "Two."]).shape == (2, 384)


def test_a_text_being_embedded_is_waited_for_not_embedded_twice(embedder: Embedder) -> None:
    """Two threads asking for the same new text at once (grounding's prefetch and the check):
    the model runs on it once and both get its vector; should the first thread's call fail,
    the waiting one embeds the text itself."""
    import threading

    started, release = threading.Event(), threading.Event()
    ran: list[list[str]] = []
    real = embedder.encode_short
    fail = {"first": False}

    def encode_short(texts: Sequence[str]) -> np.ndarray:
        ran.append(list(texts))
        if texts == ["shared claim"] and not started.is_set():
            started.set()
            release.wait(timeout=30)
            if fail["first"]:
                raise RuntimeError("the model went away")
        return real(texts)

    embedder.encode_short = encode_short  # type: ignore[method-assign]
    for failing in (False, True):
        fail["first"] = failing
        started.clear()
        release.clear()
        embedder.clear_query_cache()
        ran.clear()
        first: list[np.ndarray] = []
        errors: list[BaseException] = []

        def ask(first: list[np.ndarray], errors: list[BaseException]) -> None:
            try:
                first.append(embedder.embed_queries(["shared claim"])[0])
            except RuntimeError as exc:
                errors.append(exc)

        thread = threading.Thread(target=ask, args=(first, errors))
        thread.start()
        assert started.wait(timeout=30)
        threading.Timer(0.2, release.set).start()
        both = embedder.embed_queries(["other claim", "shared claim"])
        thread.join(timeout=30)
        expected = real(["shared claim", "other claim"])
        assert np.allclose(both[1], expected[0]) and np.allclose(both[0], expected[1])
        if failing:
            assert [str(e) for e in errors] == ["the model went away"]
            assert ran == [["shared claim"], ["other claim"], ["shared claim"]]
        else:
            assert np.allclose(first[0], both[1])
            assert ran == [["shared claim"], ["other claim"]]  # "shared claim" ran once
