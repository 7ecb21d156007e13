"""Letting ``answer`` hooks watch a model's answer while it is written (see
:mod:`keel.agents.hooks`).

A turn asked whole (``ask``) does not stream its model calls, so an answer arrives at once
and every check on it runs after it. When ``answer`` hooks want to watch, the model step asks
for the reply streamed instead (``stream=True``; the message it gets back is the same) and
hands each token to the watchers, which prepare the output checks while the model is still
writing. Only where that is safe and useful:

* the chain's models are ``openai:*`` ones (:attr:`ModelChain.streams_on_request`), whose
  streaming Keel knows; the embedded ``keel:extractive`` answers at once anyway;
* the call binds no tools and asks for no response format: llama-cpp-python's server cannot
  stream a request with tools (the stream fails after the prompt was read, 0.25-0.37 s here,
  and the reply is asked again whole), and a structured reply is checked whole.

A streamed turn is watched too. Its output checks run on each finished sentence as it is
shown (``StreamGuard``), in the thread that reads the tokens, once the next sentence has
begun, and on the last one only after the reply; the watcher has each sentence embedded as
soon as it ends, on a thread of its own. The embedder computes a text once for both threads
(the check waits for a sentence being embedded), so no sentence is embedded twice, and the
last one is ready, or nearly, when the reply ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig

from keel.agents.hooks import AnswerWatcher


class _AnswerTokens(BaseCallbackHandler):
    """Hands a model call's tokens to the watchers, in the calling thread."""

    run_inline = True

    def __init__(self, watchers: Sequence[AnswerWatcher]) -> None:
        self.watchers = list(watchers)
        self.run: UUID | None = None

    def on_llm_new_token(  # type: ignore[override]  # content is text for openai:* models
        self, token: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        if not isinstance(token, str):
            return
        if self.run is not None and run_id != self.run:  # a retry or a fallback model
            for w in self.watchers:
                w.restart()
        self.run = run_id
        for w in self.watchers:
            w.feed(token)


@dataclass
class Watch:
    """One model call's watchers, and the config that shows them its tokens."""

    config: RunnableConfig
    watchers: list[AnswerWatcher] = field(default_factory=list)

    @property
    def stream(self) -> bool:
        """Whether the call must be asked for a streamed reply."""
        return bool(self.watchers)

    def finish(self) -> None:
        for w in self.watchers:
            w.finish()


def watch(
    config: RunnableConfig,
    watchers: Callable[[], list[AnswerWatcher]],
    *,
    streams: bool,
    whole: bool,
) -> Watch:
    """The :class:`Watch` of one model call. ``watchers`` makes them (only when they can
    watch); ``streams``: the chain streams on request; ``whole``: the call binds tools or a
    response format (see the module's docstring)."""
    if not streams or whole:
        return Watch(config)
    made = watchers()
    if not made:
        return Watch(config)
    handler = _AnswerTokens(made)
    callbacks = config.get("callbacks")
    if callbacks is None:
        merged: Any = [handler]
    elif isinstance(callbacks, list):
        merged = [*callbacks, handler]
    else:  # a callback manager (a graph step's): a copy, so the handler stays with this call
        merged = callbacks.copy()
        merged.add_handler(handler, inherit=True)
    return Watch({**config, "callbacks": merged}, made)
