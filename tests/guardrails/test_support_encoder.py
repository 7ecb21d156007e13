"""The support encoder (``rag.embeddings.support``): output grounding and citation
attribution score an answer's sentences with an int8 copy of the embedding model, under its
own id, while retrieval keeps the float model; ``"full"`` keeps the float model for both."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keel.app import App
from keel.config import config_from_dict
from keel.errors import ConfigError
from keel.rag.embeddings import QUANTIZED_SUFFIX, onnx_available
from keel.testing import ScriptedChatModel

DOC = "# Exports\n\nExports are ZIP files of Markdown notes, made from Settings > Data > Export.\n"
PARAPHRASE = "You can download all your notes as a ZIP archive from the data settings."
INVENTED = "Every export is also emailed to the billing contact of the account."
GUARDS = {"output": {"grounding": {"on_fail": "fix"}}}

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime/optimum not installed")


def test_grounding_and_citations_use_the_int8_encoder_retrieval_does_not(
    make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]
) -> None:
    write(tmp_path, {"docs/exports.md": DOC})
    app = make_app({"guards": GUARDS}, model=ScriptedChatModel(script=[f"{PARAPHRASE} {INVENTED}"]))
    app.ingest()
    retrieval, support = app.resources.embedder, app.resources.support_embedder
    assert support is not retrieval and support.quantized
    assert support.model_id == retrieval.model_id + QUANTIZED_SUFFIX
    before = retrieval.encoded
    result = app.ask("How do I export my notes?")
    assert result.text.strip() == PARAPHRASE  # supported kept, invented dropped
    assert [c["attributed"] for c in result.citations] == [True]  # attributed, not cited
    assert support.encoded >= 2  # both claims (and the passage's sentences) in int8
    assert retrieval.encoded - before <= 1  # the question only: no claim went to it


def test_warm_loads_attributions_encoder_only_for_a_generative_model(
    make_app: Callable[..., App],
) -> None:
    extractive = make_app({})  # cites its own sentences: nothing is attributed
    extractive.warm()
    assert extractive.resources.support_embedder._model is None
    generative = make_app({}, model=ScriptedChatModel(script=["An answer."]))
    assert generative.resources.support_embedder._model is None  # loads on first use ...
    generative.warm()  # ... or before the first request, with no grounding rule
    assert generative.resources.support_embedder._model is not None
    named = make_app({"model": {"id": "openai:some-model"}})  # never called: nothing is asked
    named.warm()
    assert named.resources.support_embedder._model is not None


def test_support_full_keeps_the_retrieval_model(make_app: Callable[..., App]) -> None:
    app = make_app({"guards": GUARDS, "rag": {"embeddings": {"support": "full"}}})
    assert app.resources.support_embedder is app.resources.embedder


def test_int8_needs_the_onnx_backend(make_app: Callable[..., App]) -> None:
    with pytest.raises(ConfigError, match=r"support = \"int8\" is an ONNX model"):
        config_from_dict(
            {"rag": {"embeddings": {"support": "int8", "backend": "torch"}}}, base_dir=Path(".")
        )
    with pytest.raises(ConfigError, match="support"):
        config_from_dict({"rag": {"embeddings": {"support": "int4"}}}, base_dir=Path("."))
    auto = make_app({"guards": GUARDS, "rag": {"embeddings": {"backend": "torch"}}})
    assert auto.resources.support_embedder is auto.resources.embedder  # auto: no int8 on torch
