"""Short texts through an ONNX sentence-transformers model without the per-call overhead of
``SentenceTransformer.encode``.

A query, an answer's claim or a passage sentence goes through the model one per call (see
``keel.rag.embeddings.ONNX_SHORT_BATCH``). For such a call ``encode`` spends about as much
time in Python and torch around the model (features as torch tensors, the pooling and
normalising modules, device moves, its progress bar) as the int8 model spends on a short
sentence: 2.5 against 1.85 ms a claim of SmolLM2's answers here. :class:`ShortEncoder` runs
the same three steps on the same objects (the model's own tokenizer with its truncation
length, its ONNX Runtime session, mean pooling over the attention mask, L2 normalisation)
in numpy, and only for a model whose pipeline is exactly that: a ``Transformer`` module on
the ONNX backend, ``Pooling`` by mean with no prompt, and optionally ``Normalize``.
:func:`short_encoder` returns ``None`` for any other model, which then keeps ``encode``.
A test holds its vectors to ``encode``'s.

:meth:`tokenize` reads the text with a copy of the model's own Rust tokenizer (the
``tokenizers`` object behind its ``transformers`` fast tokenizer), set once to truncate at the
model's length and never to pad: the same ids as calling the ``transformers`` tokenizer,
which sets its truncation and padding again on every call and therefore may not be called
by two threads at once (a SciFact claim through the int8 model took 0.97x the time this way,
about 0.2 of 7.3 ms, on an AVX2 machine on 2026-12-07). The copy is never changed
after it is made, so :meth:`tokenize` needs no lock, and the session needs none either:
two turns embed at once. One text has no padding, so its mean is over every token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt
    from onnxruntime import InferenceSession
    from sentence_transformers import SentenceTransformer

Features = dict[str, "npt.NDArray[np.int64]"]


class ShortEncoder:
    """One text per call through a mean-pooled ONNX sentence-transformers model."""

    def __init__(self, tokenizer: Any, session: InferenceSession, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)

    def tokenize(self, text: str) -> Features:
        found = self.tokenizer.encode(text)
        return {
            name: np.asarray([getattr(found, _FIELDS[name])], dtype=np.int64)
            for name in self.inputs
        }

    def run(self, features: Features) -> npt.NDArray[np.float32]:
        """The normalised vector of one tokenized text (no padding), shape ``(dimension,)``."""
        tokens = self.session.run(None, features)[0][0]  # [tokens, dimension]
        pooled = tokens.mean(axis=0, dtype=np.float32)
        vector: npt.NDArray[np.float32] = pooled / max(float(np.sqrt(pooled @ pooled)), 1e-12)
        return vector


# the ONNX model's inputs, and the field of a ``tokenizers.Encoding`` that gives each
_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def short_encoder(model: SentenceTransformer) -> ShortEncoder | None:
    """A :class:`ShortEncoder` over ``model``'s tokenizer and session, or None when its
    pipeline is not one (see the module's docstring)."""
    from onnxruntime import InferenceSession

    modules: list[Any] = list(model)
    names = [type(m).__name__ for m in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    if any((model.prompts or {}).values()) or model.default_prompt_name:
        return None
    transformer, pooling = modules[0], modules[1]
    config = pooling.get_config_dict()
    if config.get("pooling_mode") != "mean":
        return None
    session = getattr(getattr(transformer, "auto_model", None), "session", None)
    tokenizer = getattr(transformer, "tokenizer", None)
    length = getattr(transformer, "max_seq_length", None)
    if not isinstance(session, InferenceSession) or tokenizer is None or not length:
        return None
    if getattr(transformer, "do_lower_case", False):  # encode lowercases before tokenizing
        return None
    given = {i.name for i in session.get_inputs()}
    if "attention_mask" not in given or not given <= set(_FIELDS):
        return None
    if getattr(tokenizer, "backend_tokenizer", None) is None:  # not a fast tokenizer
        return None
    return ShortEncoder(tokenizer, session, int(length))
