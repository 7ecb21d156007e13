from __future__ import annotations

import json
import math

import pytest
from langchain_core.messages import BaseMessage

from keel.db import make_engine
from keel.errors import ModelError, UsageError
from keel.evals.judges import (
    JudgeCache,
    PairwiseJudge,
    RubricJudge,
    cache_key,
    cohen_kappa,
    parse_json_object,
    win_rate,
)
from keel.testing import ScriptedChatModel


def reply(score: int, reason: str = "ok"):
    def judge(messages: list[BaseMessage]) -> str:
        return json.dumps({"score": score, "reason": reason})

    return judge


def test_parse_json_object_tolerates_fences_and_prose():
    assert parse_json_object('```json\n{"score": 4, "reason": "x"}\n```') == {
        "score": 4,
        "reason": "x",
    }
    assert parse_json_object('Sure! {"score": 2} hope that helps')["score"] == 2
    with pytest.raises(ValueError):
        parse_json_object("no json here {oops")


def test_rubric_score_parse_and_normalisation():
    model = ScriptedChatModel(script=[reply(4, "mostly right"), '```json\n{"score": 1}\n```'])
    judge = RubricJudge(model, model_id="scripted", rubric="Is the answer correct?")
    s = judge.score(question="q?", answer="a", reference="ref", contexts=["c1", "c2"])
    assert (s.raw, s.score, s.reason, s.cached) == (4, 0.75, "mostly right", False)
    prompt = model.calls[0]
    assert "Is the answer correct?" in prompt[0].text and "1" in prompt[0].text
    assert "q?" in prompt[1].text and "c2" in prompt[1].text and "ref" in prompt[1].text
    assert judge.score(question="q2", answer="a").score == 0.0
    ten = RubricJudge(ScriptedChatModel(script=[reply(7)]), model_id="s", rubric="r", scale=(0, 10))
    assert ten.score(question="q", answer="a").score == pytest.approx(0.7)


def test_parse_retry_on_a_bad_first_reply():
    model = ScriptedChatModel(script=["I think it is good", reply(9), reply(5, "fine")])
    judge = RubricJudge(model, model_id="scripted", rubric="r")
    s = judge.score(question="q", answer="a")
    assert s.raw == 5 and len(model.calls) == 3
    # the corrective turn carries the bad reply and says what is wrong
    last = model.calls[2]
    assert last[-2].text == '{"score": 9, "reason": "ok"}'
    assert "outside 1..5" in last[-1].text


def test_failure_after_retries_is_a_model_error():
    model = ScriptedChatModel(script=["nope", "still nope", "{}"])
    judge = RubricJudge(model, model_id="scripted", rubric="r", max_parse_retries=2)
    with pytest.raises(ModelError) as info:
        judge.score(question="q", answer="a")
    assert len(model.calls) == 3 and len(info.value.attempts) == 3


def test_provider_error_becomes_model_error():
    judge = RubricJudge(ScriptedChatModel(script=[TimeoutError("slow")]), model_id="x", rubric="r")
    with pytest.raises(ModelError, match="slow"):
        judge.score(question="q", answer="a")


def test_bad_scale_is_a_usage_error():
    with pytest.raises(UsageError):
        RubricJudge(ScriptedChatModel(), model_id="x", rubric="r", scale=(5, 1))


def test_cache_replays_at_zero_calls(tmp_path):
    engine = make_engine(None, tmp_path)
    inputs = [("q1", "a1"), ("q2", "a2")]
    first = ScriptedChatModel(script=["bad", reply(5, "great"), reply(2, "weak")])
    judge = RubricJudge(first, model_id="judge-1", rubric="r", cache=JudgeCache(engine))
    scores1 = [judge.score(question=q, answer=a) for q, a in inputs]
    assert len(first.calls) == 3

    second = ScriptedChatModel(script=[])  # any call would fail: the script is empty
    rerun = RubricJudge(second, model_id="judge-1", rubric="r", cache=JudgeCache(engine))
    scores2 = [rerun.score(question=q, answer=a) for q, a in inputs]
    assert second.calls == []
    assert [s.raw for s in scores2] == [s.raw for s in scores1] == [5, 2]
    assert all(s.cached for s in scores2) and scores2[0].reason == "great"

    # another judge model, rubric or input is another key
    other = ScriptedChatModel(script=[reply(3)])
    RubricJudge(other, model_id="judge-2", rubric="r", cache=JudgeCache(engine)).score(
        question="q1", answer="a1"
    )
    assert len(other.calls) == 1


def test_cache_key_and_put_overwrite(tmp_path):
    cache = JudgeCache(make_engine(None, tmp_path))
    k = cache_key("m", "prompt", {"question": "q"})
    assert k != cache_key("m2", "prompt", {"question": "q"})
    assert k != cache_key("m", "prompt", {"question": "q2"})
    assert cache.get(k) is None
    cache.put(k, "v1")
    cache.put(k, "v2")
    assert cache.get(k) == "v2"


def always_first(messages: list[BaseMessage]) -> str:
    return '{"winner": "A", "reason": "first one"}'


def prefers(text: str):
    def judge(messages: list[BaseMessage]) -> str:
        body = messages[-1].text
        a = body.split("## Answer a\n")[1].split("\n\n## Answer b")[0]
        return json.dumps({"winner": "A" if text in a else "B", "reason": "r"})

    return judge


def test_pairwise_position_bias_becomes_a_tie():
    model = ScriptedChatModel(script=[always_first, always_first])
    judge = PairwiseJudge(model, model_id="j", criteria="helpfulness")
    v = judge.compare(question="q", answer_a="short", answer_b="long and good")
    assert (v.first_order, v.swapped_order, v.consistent, v.winner) == ("a", "b", False, "tie")
    # the second call really showed the answers swapped
    assert model.calls[1][-1].text.index("long and good") < model.calls[1][-1].text.index("short")


def test_pairwise_consistent_judge_picks_a_winner():
    model = ScriptedChatModel(script=[prefers("good")] * 4)
    judge = PairwiseJudge(model, model_id="j", criteria="helpfulness")
    v = judge.compare(question="q", answer_a="bad", answer_b="good answer")
    assert (v.winner, v.consistent) == ("b", True)
    v = judge.compare(question="q", answer_a="good answer", answer_b="bad")
    assert (v.winner, v.first_order, v.swapped_order) == ("a", "a", "a")


def test_pairwise_cached(tmp_path):
    cache = JudgeCache(make_engine(None, tmp_path))
    PairwiseJudge(
        ScriptedChatModel(script=[prefers("good")] * 2), model_id="j", criteria="c", cache=cache
    ).compare(question="q", answer_a="good", answer_b="meh")
    again = ScriptedChatModel(script=[])
    v = PairwiseJudge(again, model_id="j", criteria="c", cache=cache).compare(
        question="q", answer_a="good", answer_b="meh"
    )
    assert v.winner == "a" and v.cached and again.calls == []


def test_win_rate_and_wilson_interval():
    r = win_rate(["a"] * 30 + ["tie"] * 10 + ["b"] * 10)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (30, 10, 10, 50)
    assert r["win_rate"] == pytest.approx(0.7)
    assert 0.55 < r["ci_low"] < 0.7 < r["ci_high"] < 0.82
    small = win_rate(["a", "a"])
    assert small["win_rate"] == 1.0 and small["ci_high"] == pytest.approx(1.0)
    assert small["ci_low"] < 0.5  # two wins prove little
    empty = win_rate([])
    assert math.isnan(empty["win_rate"]) and (empty["ci_low"], empty["ci_high"]) == (0.0, 1.0)
    with pytest.raises(UsageError):
        win_rate(["x"])


def test_cohen_kappa():
    labels = [1, 0, 1, 1, 0, 2, 2]
    assert cohen_kappa(labels, labels) == pytest.approx(1.0)
    assert cohen_kappa(["x"] * 4, ["x"] * 4) == 1.0
    # textbook example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    # independent random raters agree at chance: kappa close to 0
    import random

    rnd = random.Random(0)
    x = [rnd.choice("abc") for _ in range(4000)]
    y = [rnd.choice("abc") for _ in range(4000)]
    assert abs(cohen_kappa(x, y)) < 0.05
    with pytest.raises(UsageError):
        cohen_kappa([1], [1, 2])


def test_async_paths(tmp_path):
    import asyncio

    cache = JudgeCache(make_engine(None, tmp_path))
    model = ScriptedChatModel(script=["???", reply(3, "meh"), always_first, always_first])
    rubric = RubricJudge(model, model_id="j", rubric="r", cache=cache)
    pairwise = PairwiseJudge(model, model_id="j", criteria="c", cache=cache)

    async def go():
        s = await rubric.ascore(question="q", answer="a")
        v = await pairwise.acompare(question="q", answer_a="x", answer_b="y")
        again = await rubric.ascore(question="q", answer="a")
        return s, v, again

    s, v, again = asyncio.run(go())
    assert (s.raw, s.cached) == (3, False) and v.winner == "tie"
    assert again.cached and len(model.calls) == 4
