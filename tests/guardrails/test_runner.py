"""Guards at the hook points, through guardrails-ai Guards, configured by keel.toml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.app import App
from keel.config import GuardsSection
from keel.errors import ConfigError
from keel.guardrails.runner import GuardRunner, Services, new_guard
from keel.testing import ScriptedChatModel

call = ScriptedChatModel.tool_call


def runner(**points: Any) -> GuardRunner:
    return GuardRunner(GuardsSection(**points), Services(embedder=lambda: None))


def test_hub_telemetry_is_off_for_every_guard() -> None:
    from guardrails.settings import settings

    new_guard()
    assert settings.rc.enable_metrics is False


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ({"input": {"nope": {}}}, "unknown validator"),
        ({"input": {"length": {"on_fail": "explode"}}}, "on_fail"),
        ({"input": {"length": {"max_chars": "many"}}}, "guards.input.length"),
        ({"input": {"length": {"colour": "red"}}}, "guards.input.length"),
        ({"output": {"pii": {"tools": "all"}}}, "only tool_args"),
    ],
)
def test_bad_guard_config_is_a_config_error(points: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        runner(**points)


def test_actions_fix_exception_noop_and_decisions() -> None:
    r = runner(
        input={"length": {"on_fail": "fix", "max_chars": 5}},
        output={"length": {"on_fail": "exception", "max_chars": 5}},
        context={"length": {"on_fail": "noop", "max_chars": 5}},
    )
    text, decisions = r.check("input", "abcdefgh")
    assert text == "abcde" and decisions[0].outcome == "fail" and decisions[0].action == "fix"
    assert decisions[0].details == {"chars": 8} and decisions[0].latency_ms > 0
    text, decisions = r.check("output", "abcdefgh")
    assert text is None and "limit 5" in decisions[0].reason
    text, decisions = r.check("context", "abcdefgh")
    assert text == "abcdefgh" and decisions[0].outcome == "fail"  # noop: recorded, unchanged
    text, decisions = r.check("input", "abc")
    assert text == "abc" and decisions[0].outcome == "pass"


def test_a_points_rules_run_in_one_guard_in_turn() -> None:
    """One guardrails-ai Guard per point: a fix hands its text to the next rule, a noop
    failure beside a fix keeps the fix (guardrails-ai's own outcome has no value then), the
    first rule that stops ends the run, and each rule that ran has its own decision."""
    r = runner(
        input={
            "length": {"on_fail": "noop", "max_chars": 10},
            "pii": {"on_fail": "fix", "entities": ["EMAIL_ADDRESS"]},
            "secrets": {"on_fail": "fix"},
        },
        output={
            "pii": {"on_fail": "fix", "entities": ["EMAIL_ADDRESS"]},
            "length": {"on_fail": "exception", "max_chars": 20},
            "secrets": {"on_fail": "fix"},
        },
    )
    text, decisions = r.check("input", "write to ann@example.com please")
    assert text is not None and "ann@example.com" not in text and "please" in text
    assert [(d.validator, d.outcome, d.action) for d in decisions] == [
        ("length", "fail", "noop"),
        ("pii", "fail", "fix"),
        ("secrets", "pass", "none"),
    ]
    assert all(d.latency_ms > 0 for d in decisions)
    assert r.guard(tuple(r.rules["input"])) is r.guard(tuple(r.rules["input"]))  # built once
    text, decisions = r.check("output", "write to ann@example.com please, today")
    assert text is None  # the fixed text is still over 20 characters: stopped by length
    assert [(d.validator, d.outcome) for d in decisions] == [("pii", "fail"), ("length", "fail")]
    assert "limit 20" in decisions[-1].reason


def test_a_guard_keeps_no_text_after_its_call() -> None:
    """guardrails-ai keeps every call (text, metadata with the PII placeholders' values) in
    the Guard's history; the runner leaves none there, whether the text passed or stopped."""
    r = runner(
        input={"pii": {"on_fail": "fix", "entities": ["EMAIL_ADDRESS"]}},
        output={"length": {"on_fail": "exception", "max_chars": 5}},
    )
    memory: dict[str, Any] = {}
    text, _ = r.check("input", "write to ann@example.com", memory=memory)
    assert text is not None and "ann@example.com" not in text
    assert "ann@example.com" in memory["pii"]  # the conversation's memory has it ...
    assert len(r.guard(tuple(r.rules["input"])).history) == 0  # ... the Guard does not
    assert r.check("output", "far too long")[0] is None
    assert len(r.guard(tuple(r.rules["output"])).history) == 0


def test_json_schema_validator() -> None:
    schema = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
    r = runner(output={"json_schema": {"schema": schema}})
    assert r.check("output", '{"id": 3}')[0] == '{"id": 3}'
    assert "id" in r.check("output", '{"id": "x"}')[1][0].reason
    assert "not JSON" in r.check("output", "id: 3")[1][0].reason


def test_prompt_leak_by_canary_and_by_overlap() -> None:
    system = "You are the support assistant for Nimbus Notes and you answer from the help center"
    r = GuardRunner(
        GuardsSection(output={"prompt_leak": {}}),
        Services(embedder=lambda: None, system_prompt=lambda: system, canary="keel-canary-1"),
    )
    assert r.check("output", "Refunds take 30 days.")[0] is not None
    assert r.check("output", "Sure: keel-canary-1")[0] is None
    leaked = f"My instructions say: {system}."
    text, decisions = r.check("output", leaked)
    assert text is None and decisions[0].details["overlap"] == 1.0


def test_app_guards_stop_fix_filter_and_block(
    make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]
) -> None:
    write(
        tmp_path,
        {
            "docs/a.md": "# Short\n\nRefunds take 30 days.\n",
            "docs/b.md": "# Long\n\n" + "Refund details are long. " * 20 + "\n",
            "tools.py": (
                "from keel.tools import tool\n\n@tool(side_effects='write')\n"
                'def send(text: str) -> str:\n    """Send a text."""\n    return \'sent\'\n'
            ),
        },
    )
    guards = {
        "input": {"topic_denylist": {"topics": ["medical diagnosis"], "on_fail": "exception"}},
        "context": {"length": {"max_chars": 100, "on_fail": "filter"}},
        "tool_args": {"length": {"max_chars": 10, "on_fail": "exception", "tools": "external"}},
        "output": {"length": {"max_chars": 12, "on_fail": "fix"}},
        "message": "Sorry, I can't help with that.",
    }
    seen: list[Any] = []

    def answer(messages: list[Any]) -> str:
        seen.append(messages[-1].content)
        return "Refunds take 30 days [1]."

    model = ScriptedChatModel(script=[answer, call("send", {"text": "a long message here"}), "ok"])
    app = make_app({"guards": guards, "tools": {"enabled": ["tools"]}}, model=model)
    app.ingest()

    blocked = app.ask("medical diagnosis of my rash please")
    assert blocked.stop_reason == "guardrail" and blocked.text == "Sorry, I can't help with that."

    ok = app.ask("how long do refunds take?")
    assert ok.text == "Refunds take"  # the output fix cut it at 12 characters
    assert "docs/b.md" not in seen[0] and "docs/a.md" in seen[0]  # long chunk quarantined
    points = {(e["point"], e["name"], e["outcome"]) for e in ok.events}
    assert ("context", "length", "fail") in points and ("output", "length", "fail") in points
    assert any(e.get("name") == "quarantine" for e in ok.events)

    tool = app.ask("send it")
    assert tool.tool_calls[0]["status"] == "refused"
    assert "blocked by a guard" in tool.tool_calls[0]["content"]


def test_streaming_stops_before_the_violating_sentence(make_app: Callable[..., App]) -> None:
    app = make_app({"guards": {"output": {"prompt_leak": {}}}, "agent": {"retrieve": False}})
    leak = f"Happy to help with that today. The secret marker is {app.canary}. Bye now."
    app.model = ScriptedChatModel(script=[leak])
    events = list(app.stream("tell me everything"))
    shown = "".join(e["text"] for e in events if e["type"] == "token")
    assert shown == "Happy to help with that today. "
    assert app.canary not in shown
    assert any(e["type"] == "guardrail" and e["name"] == "prompt_leak" for e in events)
    done = events[-1]["answer"]
    assert done["stop_reason"] == "guardrail" and app.canary not in done["text"]


def test_stream_without_violation_shows_everything(make_app: Callable[..., App]) -> None:
    app = make_app({"guards": {"output": {"prompt_leak": {}}}, "agent": {"retrieve": False}})
    app.model = ScriptedChatModel(script=["One sentence here. Another one there. The end"])
    events = list(app.stream("hi"))
    shown = "".join(e["text"] for e in events if e["type"] == "token")
    assert shown == "One sentence here. Another one there. The end"
    assert events[-1]["answer"]["text"] == shown


def test_reask_sends_the_answer_back_to_the_model_once(make_app: Callable[..., App]) -> None:
    guards = {"output": {"length": {"max_chars": 20, "on_fail": "reask"}}}
    seen: list[Any] = []

    def second(messages: list[Any]) -> str:
        seen.append(messages)
        return "Short answer."

    app = make_app(
        {"guards": guards, "agent": {"retrieve": False}},
        model=ScriptedChatModel(script=["This answer is far too long to pass.", second]),
    )
    answer = app.ask("hi")
    assert answer.text == "Short answer." and answer.stop_reason == "done"
    assert "rejected by a check" in str(seen[0][-1].content)
    assert [m.type for m in app.history(answer.thread_id)] == ["human", "ai"]  # no stale answer
    assert any(e.get("outcome") == "reask" for e in answer.events)

    stubborn = make_app(
        {"guards": guards, "agent": {"retrieve": False}},
        model=ScriptedChatModel(script=["Still far too long to pass.", "And again far too long."]),
    )
    refused = stubborn.ask("hi")
    assert refused.stop_reason == "guardrail" and refused.text.startswith("I don't know")


def test_reask_is_only_for_the_output_point() -> None:
    with pytest.raises(ConfigError, match="reask"):
        runner(input={"length": {"on_fail": "reask"}})


def test_warm_loads_what_the_configured_guards_need_before_any_request() -> None:
    loaded: list[str] = []

    class Probe:
        def embed_query(self, text: str) -> Any:
            raise AssertionError("warm must not embed anything")

    def embedder() -> Any:
        loaded.append("embedder")
        return Probe()

    runner = GuardRunner(
        GuardsSection(input={"secrets": {"on_fail": "exception"}}), Services(embedder=embedder)
    )
    runner.warm()
    assert loaded == []  # secrets needs no model
    guarded = GuardRunner(
        GuardsSection(output={"grounding": {"on_fail": "fix"}}), Services(embedder=embedder)
    )
    guarded.warm()
    assert loaded == ["embedder"]

    def support() -> Any:
        loaded.append("support")
        return Probe()

    loaded.clear()
    services = Services(embedder=embedder, support=support)
    GuardRunner(GuardsSection(output={"grounding": {"on_fail": "fix"}}), services).warm()
    assert loaded == ["support"]  # grounding scores with the support encoder alone


def test_a_chunk_retrieved_again_reuses_its_context_verdict() -> None:
    """The context point's rules are pure functions of the chunk here (a length rule), so a
    chunk seen before is not validated again: same outcome, marked cached."""
    from keel.agents.hooks import RunContext
    from keel.rag.types import Hit

    r = runner(context={"length": {"on_fail": "filter", "max_chars": 40}})
    calls: list[str] = []
    check = r.check

    def counting(point: str, text: str, **kw: Any) -> Any:
        calls.append(text)
        return check(point, text, **kw)

    r.check = counting  # type: ignore[method-assign]
    short = Hit("a", "a#0", "Refunds take 30 days.", 1.0, "a.md")
    long = Hit("b", "b#0", "x" * 80, 0.5, "b.md")
    for turn in range(3):
        ctx = RunContext(app="t", thread_id=f"t{turn}", scopes=None)
        assert [h.chunk_id for h in r.on_context([short, long], ctx)] == ["a#0"]
        outcomes = [(e["chunk_id"], e["outcome"]) for e in ctx.events if e["name"] == "length"]
        assert outcomes == [("a#0", "pass"), ("b#0", "fail")]
        cached = [
            e.get("details", {}).get("cached", False) for e in ctx.events if "latency_ms" in e
        ]
        assert cached == [turn > 0, turn > 0]
    assert calls == [short.text, long.text]  # each validated once

    # a rule that reads the turn (pii placeholders) is never reused
    fresh = runner(context={"pii": {"on_fail": "fix"}, "length": {"max_chars": 400}})
    assert fresh._context_is_pure is False
