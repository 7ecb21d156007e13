"""RAGAS judge metrics with a scripted judge: the suite's judge reaches RAGAS, its replies are
read into RAGAS's structures, cached, and replayed on a rerun; no judge means skipped."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from langchain_core.messages import BaseMessage

from keel.app import App
from keel.errors import UsageError
from keel.evals.judges import JudgeCache, RagasJudge, ragas_llm
from keel.evals.metrics import NO_JUDGE
from keel.evals.runner import run_suite
from keel.evals.suites import load_suite
from keel.testing import ScriptedChatModel

DOCS = {
    "docs/refunds.md": "# Refunds\n\nRefunds are paid within 30 days of purchase.\n",
    "docs/sync.md": "# Sync\n\nNotes sync every five minutes on every device.\n",
}
# The app's answers: the first sentence is in the docs, the second is not.
ANSWERS = {
    "How long do refunds take?": "Refunds are paid within 30 days. Refunds are paid in gold.",
    "How often do notes sync?": "Notes sync every five minutes. Notes sync by carrier pigeon.",
}


def _input(prompt: str) -> dict[str, Any]:
    """The input JSON RAGAS puts at the end of its prompts."""
    body = prompt.rsplit("input: ", 1)[1].rsplit("Output:", 1)[0]
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def ragas_judge(messages: list[BaseMessage]) -> str:
    """Answers RAGAS's prompts the way a careful judge would, by reading the prompt."""
    prompt = str(messages[-1].text)
    data = _input(prompt)
    if "fully understandable statements" in prompt:  # Faithfulness, step 1
        sentences = [s.strip() for s in data["answer"].split(". ") if s.strip()]
        return json.dumps({"statements": [s.rstrip(".") + "." for s in sentences]})
    if "faithfulness of a series of statements" in prompt:  # Faithfulness, step 2
        context = _words(data["context"])
        verdicts = [
            {"statement": s, "reason": "read", "verdict": int(_words(s) <= context)}
            for s in data["statements"]
        ]
        return "Here you go:\n```json\n" + json.dumps({"statements": verdicts}) + "\n```"
    if "context was useful" in prompt:  # ContextPrecision, one call per context
        useful = bool(_words(data["answer"]) & _words(data["context"]) - {"are", "the", "of"})
        return json.dumps({"reason": "overlap", "verdict": int(useful)})
    raise AssertionError(f"unexpected judge prompt: {prompt[:200]}")


def _suite(tmp_path: Path, **extra: Any) -> Path:
    evals = tmp_path / "evals"
    evals.mkdir(exist_ok=True)
    cases = [
        {"id": "refunds", "input": q, "reference": "Refunds are paid within 30 days."}
        if "refund" in q
        else {"id": "sync", "input": q, "reference": "Notes sync every five minutes."}
        for q in ANSWERS
    ]
    (evals / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    body = {
        "name": "judged",
        "dataset": "cases.jsonl",
        "metrics": {"faithfulness": {"threshold": 0.4}, "context_precision": {}},
        "concurrency": 2,
        "retries": 0,
        **extra,
    }
    (evals / "judged.yaml").write_text(yaml.safe_dump(body))
    return evals / "judged.yaml"


@pytest.fixture
def kb_app(make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]) -> App:
    write(tmp_path, DOCS)

    def answer(messages: list[BaseMessage]) -> str:
        turn = str(messages[-1].text)
        return next(a for q, a in ANSWERS.items() if q in turn)

    app = make_app({"rag": {"retrieval": {"k": 2}}}, model=ScriptedChatModel(script=[answer] * 8))
    app.ingest()
    return app


def test_judge_metrics_score_through_the_suites_judge(kb_app: App, tmp_path: Path) -> None:
    judge = ScriptedChatModel(script=[ragas_judge] * 40)
    run = run_suite(load_suite(_suite(tmp_path)), app=kb_app, judge=judge)
    assert not run.errors and run.skipped_metrics == {}
    faithful = run.per_case("faithfulness")
    assert faithful == {"refunds": pytest.approx(0.5), "sync": pytest.approx(0.5)}
    # both documents are retrieved (k=2); only the one the answer draws on was useful, and
    # it ranks first, so precision@rank is 1
    precision = run.per_case("context_precision")
    assert precision == {"refunds": pytest.approx(1.0), "sync": pytest.approx(1.0)}
    # two faithfulness calls and two context verdicts per case
    assert len(judge.calls) == 2 * (2 + 2)

    # a rerun replays the judge from the cache: no judge call at all
    again = ScriptedChatModel(script=[])
    rerun = run_suite(load_suite(_suite(tmp_path)), app=kb_app, judge=again)
    assert again.calls == [] and rerun.per_case("faithfulness") == faithful
    assert rerun.per_case("context_precision") == precision


def test_without_a_judge_the_judge_metrics_are_skipped(kb_app: App, tmp_path: Path) -> None:
    run = run_suite(load_suite(_suite(tmp_path)), app=kb_app)
    assert run.skipped_metrics == {"faithfulness": NO_JUDGE, "context_precision": NO_JUDGE}
    assert run.aggregates == {} and not run.errors


def test_a_judge_that_cannot_be_built_is_a_skip_with_its_reason(
    kb_app: App, tmp_path: Path
) -> None:
    suite = load_suite(_suite(tmp_path, judge="keel:extractive"))
    run = run_suite(suite, app=kb_app)
    reason = run.skipped_metrics["faithfulness"]
    assert reason.startswith("judge 'keel:extractive' could not be built: UsageError")
    assert "cannot judge" in reason


def test_ragas_llm_reads_replies_into_ragas_structures(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from keel.db import make_engine

    class Verdict(BaseModel):
        verdict: int
        reason: str

    model = ScriptedChatModel(
        script=['{"verdict": "maybe"}', 'Sure! {"verdict": 1, "reason": "ok"}']
    )
    judge = ragas_llm(model, cache=JudgeCache(make_engine(None, tmp_path)), max_parse_retries=1)
    assert isinstance(judge, RagasJudge) and judge.model_id == "ScriptedChatModel"
    from ragas.llms.base import InstructorBaseRagasLLM

    assert isinstance(judge, InstructorBaseRagasLLM)
    assert judge.generate("Is it so? input: {}", Verdict) == Verdict(verdict=1, reason="ok")
    corrective = str(model.calls[1][-1].text)
    assert "verdict" in corrective and "JSON object" in corrective
    assert judge.generate("Is it so? input: {}", Verdict).verdict == 1  # cached
    assert len(model.calls) == 2
    with pytest.raises(UsageError, match="cannot judge"):
        ragas_llm("keel:extractive")
