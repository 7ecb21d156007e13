"""Keel's generative paths against a real model behind a real OpenAI-compatible server:
llama.cpp's server with SmolLM2-135M-Instruct (the `llm_server` fixture). The model is weak, so
these tests assert Keel's mechanics (requests the server accepts, replies parsed, citations
attached, tool calls dispatched under the policy, usage read, guards run on generated text),
not the model's skill; where a test needs structure it forces it (tool_choice)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from keel.agents.citations import cited_numbers
from keel.agents.events import Done, Token
from keel.agents.params import ModelParams
from keel.app import App
from keel.config import load_config
from keel.rag.sentences import split_sentences
from keel.rag.support import support_scores
from keel.rag.types import Hit
from keel.settings import Settings

if TYPE_CHECKING:
    from tests.agents.conftest import EncoderCalls

pytestmark = pytest.mark.llm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_bot"


@pytest.fixture(scope="module")
def bot_dir(tmp_path_factory: pytest.TempPathFactory, save_note_tool: str) -> Path:
    """A copy of the support bot (its tools write beside keel.toml) with one more tool."""
    root = tmp_path_factory.mktemp("bot") / "support_bot"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".keel"))
    (root / "notes_tool.py").write_text(save_note_tool, encoding="utf-8")
    return root


def _bot(bot_dir: Path, settings: Settings, llm_model: dict[str, Any], **changes: Any) -> App:
    config = load_config(bot_dir / "keel.toml")
    raw = config.model_dump()
    raw["model"] = llm_model
    raw["costs"] = {"prices": {"openai:smollm2": {"input_per_million": 0, "output_per_million": 0}}}
    # Guards are what a test gives: these tests are about the model's mechanics (the example's
    # default policy is tested with the real model in test_output_guards_... below)
    raw["guards"] = {}
    for key, value in changes.items():
        raw[key] = value
    return App(type(config).model_validate({**raw, "base_dir": bot_dir}), settings=settings)


@pytest.fixture
def bot(bot_dir: Path, llm_settings: Settings, llm_model: dict[str, Any]) -> Any:
    """The support bot on the real model, answering from its docs. No tools: with
    tool_choice "auto" this small model calls a tool for nearly every question (the tool
    tests below bind them)."""
    app = _bot(bot_dir, llm_settings, llm_model, tools={"enabled": []})
    app.ingest()
    yield app
    app.close()


def test_a_generated_answer_has_citations_usage_and_cost(bot: App) -> None:
    answer = bot.ask("How long do I have to ask for a refund on an annual plan?")
    assert answer.stop_reason == "done" and answer.text.strip(), answer.tool_calls
    assert answer.model == "openai:smollm2"
    # the server's own token counts, and cost 0 for a model priced as local
    assert answer.usage["input_tokens"] > 100 and answer.usage["output_tokens"] > 0
    assert answer.cost_usd == 0.0
    assert answer.finish_reason in ("stop", "length")
    # cited by the model or, when it did not, attributed by Keel: never empty when the
    # passages support the answer, and every citation is a passage the model was given
    hits = [Hit.of(h) for h in answer.hits]
    support = support_scores(split_sentences(answer.text), [h.text for h in hits], bot.embedder)
    assert support.max() >= 0.55  # this answer is supported (else the test would prove nothing)
    given = {h.chunk_id for h in hits}
    assert answer.citations, answer.text
    assert all(c["chunk_id"] in given for c in answer.citations)
    if not cited_numbers(answer.text):
        assert all(c["attributed"] for c in answer.citations)


def test_the_async_path_answers_and_streams_from_the_real_server(bot: App) -> None:
    """App.aask and App.astream on LangGraph's async path (ainvoke/astream on this loop), with
    the model called through the OpenAI client's async API: a cited answer, a real stream,
    and the thread's history kept across the two."""
    import asyncio

    async def run() -> tuple[Any, list[Any]]:
        first = await bot.aask("How long do I have to ask for a refund on an annual plan?")
        events = [e async for e in bot.astream("And on a monthly plan?", first.thread_id)]
        return first, events

    first, events = asyncio.run(run())
    assert first.stop_reason == "done" and first.text.strip() and first.citations
    assert first.usage["output_tokens"] > 0
    done = events[-1]
    assert isinstance(done, Done)
    tokens = [e.text for e in events if isinstance(e, Token)]
    assert "".join(tokens).strip() and "".join(tokens) == done.answer.text
    assert len(tokens) > 1  # really streamed
    history = bot.history(first.thread_id)
    assert [type(m).__name__ for m in history].count("HumanMessage") == 2


def test_max_tokens_cuts_a_reply_and_says_length(bot: App) -> None:
    answer = bot.ask(
        "Explain everything about workspaces and sharing.", params=ModelParams(max_tokens=5)
    )
    assert answer.finish_reason == "length"
    assert answer.usage["output_tokens"] <= 5


def test_a_streamed_answer_matches_the_final_answer(bot: App) -> None:
    events = list(bot.stream("How do I turn on two-factor authentication?"))
    tokens = "".join(e["text"] for e in events if e["type"] == "token")
    done = events[-1]
    assert done["type"] == "done"
    answer = done["answer"]
    assert tokens.strip() and tokens == answer["text"]
    assert len([e for e in events if e["type"] == "token"]) > 1  # really streamed
    # llama-cpp-python sends no usage on streams: unknown, never zeros, and no cost
    assert answer["usage"] == {} or answer["usage"]["total_tokens"] > 0
    if answer["usage"] == {}:
        assert answer["cost_usd"] is None
    streamed = [{k: v for k, v in e.items() if k != "type"} for e in events[:-1]]
    assert [c for c, e in zip(streamed, events, strict=False) if e["type"] == "citation"] == (
        answer["citations"]
    )
    assert answer["citations"]  # attributed when the model wrote no [n]


def test_a_real_tool_call_waits_for_approval_and_runs_once_approved(
    bot_dir: Path, llm_settings: Settings, llm_model: dict[str, Any]
) -> None:
    app = _bot(
        bot_dir,
        llm_settings,
        llm_model,
        tools={"enabled": ["notes_tool:save_note"]},
        agent={"retrieve": False, "max_steps": 3},
    )
    try:
        forced = {"type": "function", "function": {"name": "save_note"}}
        question = "Please save a note that the customer wants a call back."
        paused = app.ask(question, tool_choice=forced)
        assert paused.stop_reason == "approval_required"
        (call,) = paused.pending_approval or []
        assert call["name"] == "save_note" and isinstance(call["args"]["text"], str)
        assert not (bot_dir / "notes.txt").exists()
        approval = {"action": "approve", "args_hash": call["args_hash"]}
        done = app.resume(paused.thread_id, {call["id"]: approval})
        ran = [t for t in done.tool_calls if t["name"] == "save_note"]
        assert ran and ran[0]["id"] == call["id"] and ran[0]["status"] == "ok"
        # the small model may ask to save again: that is a new call, waiting for its own
        # approval; rejecting it runs nothing
        if done.stop_reason == "approval_required":
            again = done.pending_approval or []
            assert again and all(c["id"] != call["id"] for c in again)
            done = app.resume(paused.thread_id, "reject")
        assert done.stop_reason in ("done", "step_limit")
        assert len((bot_dir / "notes.txt").read_text().splitlines()) == 1
        # the history the server accepted: an assistant message with tool_calls and "" content
        history = app.history(paused.thread_id)
        assert any(getattr(m, "tool_calls", None) for m in history)
    finally:
        app.close()


def test_a_schema_the_server_grammar_cannot_compile_degrades_to_keels_validation(
    bot_dir: Path, llm_settings: Settings, llm_model: dict[str, Any]
) -> None:
    """open_ticket's email has a regex pattern (\\w) that crashed llama.cpp's grammar
    compiler: the pattern is left out of what the server gets, and Keel validates it."""
    app = _bot(bot_dir, llm_settings, llm_model, agent={"retrieve": False, "max_steps": 2})
    try:
        forced = {"type": "function", "function": {"name": "open_ticket"}}
        question = "Open a ticket: sync is broken. My email is bob@example.com"
        answer = app.ask(question, tool_choice=forced)
        if answer.stop_reason == "approval_required":  # the arguments fit the pattern
            (call,) = answer.pending_approval or []
            assert call["name"] == "open_ticket"
        else:  # they did not: refused by Keel's validation, told to the model, no crash
            (outcome, *_) = answer.tool_calls
            assert outcome["name"] == "open_ticket" and outcome["status"] == "invalid"
            assert "email" in (outcome["error"] or "")
    finally:
        app.close()


def test_output_guards_run_on_a_real_generated_stream(
    bot_dir: Path, llm_settings: Settings, llm_model: dict[str, Any]
) -> None:
    guards = {
        "output": {
            "grounding": {"on_fail": "fix"},
            "pii": {"on_fail": "fix"},
            "secrets": {"on_fail": "exception"},
            "prompt_leak": {"on_fail": "exception"},
        }
    }
    app = _bot(bot_dir, llm_settings, llm_model, guards=guards, tools={"enabled": []})
    try:
        app.ingest()
        events = list(app.stream("How do I export my notes?"))
        answer = events[-1]["answer"]
        ran = {(e["point"], e["name"]) for e in answer["events"] if "point" in e}
        assert {("output", "grounding"), ("output", "secrets")} <= ran
        shown = "".join(e["text"] for e in events if e["type"] == "token")
        # what was shown passed the guards sentence by sentence; the final text is the
        # guarded one (a fix after a sentence was shown stops the stream there)
        assert answer["text"].startswith(shown.strip()[:20]) or any(
            e["type"] == "guardrail" for e in events
        )
    finally:
        app.close()


def test_the_server_is_sent_max_tokens_and_an_explicit_tool_choice(
    bot_dir: Path, llm_settings: Settings, llm_model: dict[str, Any]
) -> None:
    """What goes over the wire, read from the request the client builds."""
    app = _bot(bot_dir, llm_settings, llm_model)
    model = app.agent.chain.models[0][1]
    tools = app.agent.policy({"configurable": {}}).visible().to_openai()
    bound = app.agent.chain.bind(tools)._bound(model)
    payload = model._get_request_payload(
        [("user", "hi")], **{**bound.kwargs, "max_tokens": 7, "temperature": 0}
    )
    assert payload["max_tokens"] == 7 and "max_completion_tokens" not in payload
    assert payload["tool_choice"] == "auto"
    email = next(t for t in payload["tools"] if t["function"]["name"] == "open_ticket")
    assert "pattern" not in json.dumps(email)


def test_an_app_made_by_keel_init_model_grounds_the_real_models_answers(
    tmp_path: Path, llm_settings: Settings, llm_model: dict[str, Any]
) -> None:
    """`keel init --model openai:...` writes the default policy with output grounding; on the
    real model the answer's sentences are checked against the retrieved passages."""
    from keel.scaffold import init_app

    init_app(tmp_path / "app", model=llm_model["id"])
    config = load_config(tmp_path / "app" / "keel.toml")
    assert config.model.id == llm_model["id"] and "grounding" in config.guards.output
    raw = config.model_dump()
    raw["model"] = llm_model  # the same id, with short deterministic replies
    raw["tools"] = {"enabled": []}
    app = App(
        type(config).model_validate({**raw, "base_dir": tmp_path / "app"}), settings=llm_settings
    )
    try:
        app.ingest()
        answer = app.ask("How do I add documents to the app?")
        ran = {(e["point"], e["name"]) for e in answer.events if "point" in e}
        assert ("output", "grounding") in ran, answer.events
        grounding = next(e for e in answer.events if e["name"] == "grounding")
        details = grounding.get("details") or {}
        # the fix drops every sentence it found unsupported from the answer the user gets
        assert "unsupported" in details, grounding
        assert not [s for s in details["unsupported"] if s in answer.text], answer.text
    finally:
        app.close()


@pytest.fixture
def grounded_bot(
    bot_dir: Path,
    llm_settings: Settings,
    llm_model: dict[str, Any],
    ready_and_spied: Callable[[App], EncoderCalls],
) -> Callable[[bool], AbstractContextManager[tuple[App, EncoderCalls]]]:
    """The bot on the real model with output grounding, ``prefetch`` on or off, ready, with
    the support encoder's calls recorded; closed when the block ends."""

    @contextmanager
    def grounded(prefetch: bool) -> Iterator[tuple[App, EncoderCalls]]:
        guards = {"output": {"grounding": {"on_fail": "fix", "prefetch": prefetch}}}
        app = _bot(bot_dir, llm_settings, llm_model, guards=guards, tools={"enabled": []})
        try:
            yield app, ready_and_spied(app)
        finally:
            app.close()

    return grounded


def test_grounding_embeds_the_real_models_sentences_while_it_writes(
    grounded_bot: Callable[[bool], AbstractContextManager[tuple[App, EncoderCalls]]],
) -> None:
    """ask() with output grounding streams the real server's reply and embeds each finished
    sentence on the prefetch's thread, so the check after the reply has at most the last one
    left; its decisions are those of the same turn asked whole, with no prefetch."""
    question = "How do I export my notes?"
    reports = []
    for prefetch in (True, False):
        with grounded_bot(prefetch) as (app, calls):
            answer = app.ask(question)
        grounding = next(e for e in answer.events if e["name"] == "grounding")
        details = grounding.get("details") or {}
        reports.append((details, answer.text))
        if prefetch:
            ahead = [t for n, ts in calls if n == "keel-support-prefetch" for t in ts]
            after = [t for n, ts in calls if n != "keel-support-prefetch" for t in ts]
            checked = len(details.get("scores", []))
            assert checked >= 2, details  # a reply of several sentences to watch
            assert len([t for t in after if t not in ahead]) <= 1, (ahead, after)
    assert reports[0] == reports[1]


def test_a_streamed_turn_with_prefetch_embeds_each_real_sentence_once(
    grounded_bot: Callable[[bool], AbstractContextManager[tuple[App, EncoderCalls]]],
) -> None:
    """A streamed turn on the real server with grounding's ``prefetch``: the prefetch's thread
    embeds the sentences as they end, the checks as each is shown find them (no sentence goes
    through the encoder twice), and the turn shows and decides what it does without it."""
    question = "How do I export my notes?"
    seen = []
    for prefetch in (True, False):
        with grounded_bot(prefetch) as (app, calls):
            events = list(app.stream(question))
        assert events[-1]["type"] == "done", events[-1]
        shown = "".join(e["text"] for e in events if e["type"] == "token")
        decided = [
            {k: v for k, v in e.items() if k != "latency_ms"}
            for e in events[-1]["answer"]["events"]
        ]
        seen.append((shown, decided))
        texts = [t for _, ts in calls for t in ts]
        ahead = [t for n, ts in calls if n == "keel-support-prefetch" for t in ts]
        assert len(texts) == len(set(texts)), calls  # none embedded twice
        assert bool(ahead) is prefetch, calls
    assert seen[0] == seen[1]
