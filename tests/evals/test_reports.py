from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from rich.console import Console

from keel.evals.gate import gate
from keel.evals.reports import terminal_table, to_json, write_html, write_json, write_junit
from keel.evals.runner import CaseResult, RunResult

EVIL = "<script>alert('x')</script>"


def case(
    cid: str, recall: float, *, output: str = "an answer", error: str | None = None, repeat: int = 0
) -> CaseResult:
    return CaseResult(
        case_id=cid,
        repeat=repeat,
        input=f"question {cid} & <b>more</b>",
        output=output,
        contexts=[f"context one of {cid}", "context <two>"],
        doc_ids=["doc-1"],
        tool_calls=[],
        trace_id=f"trace-{cid}-{repeat}",
        latency_ms=123.4,
        cost_usd=0.00042,
        guard_events=[{"guard": "pii", "point": "output", "action": "redact"}],
        scores={"recall": recall, "latency": 123.4},
        error=error,
    )


def run_of(cases: list[CaseResult], skipped: dict[str, str] | None = None) -> RunResult:
    recall = [c.scores["recall"] for c in cases if c.scores["recall"] is not None]
    return RunResult(
        suite="support",
        dataset_version="ds1",
        app_version="app1",
        model="keel:extractive",
        started_at="2025-01-01T00:00:00Z",
        cases=cases,
        aggregates={
            "recall": {
                "mean": sum(recall) / len(recall),
                "ci_low": 0.1,
                "ci_high": 0.9,
                "n": len(recall),
            },
            "latency": {"mean": 123.4, "ci_low": 123.4, "ci_high": 123.4, "n": len(cases)},
        },
        skipped_metrics=skipped or {},
    )


THRESH = {"recall": 0.5, "latency": 1000.0, "faithfulness": 0.7}
HIB = {"recall": True, "latency": False, "faithfulness": True}


def failing() -> tuple[RunResult, RunResult, object]:
    base = run_of([case(f"c{i}", 0.9) for i in range(10)])
    cur_cases = [case(f"c{i}", 0.9 if i % 3 else 0.1) for i in range(10)]
    cur_cases[1] = case("c1", 0.9, output=EVIL)
    cur_cases.append(case("boom", 0.0, error="TimeoutError: model took too long\nline 2"))
    cur = run_of(cur_cases, skipped={"faithfulness": "needs a judge model; none configured"})
    return cur, base, gate(cur, thresholds=THRESH, higher_is_better=HIB, baseline=base)


def test_terminal_table():
    cur, _base, result = failing()
    console = Console(record=True, width=200)
    console.print(terminal_table(cur, result))
    text = console.export_text()
    assert "FAILED" in text and "recall" in text and "REGRESSED" in text
    assert "SKIP" in text and "≤ 1000.000" in text


def test_json(tmp_path):
    cur, _base, result = failing()
    data = to_json(cur, result)
    assert data["passed"] is False
    assert data["gate"]["verdicts"][0]["metric"] == "recall"
    assert data["gate"]["worse_cases"][0]["case_id"] in {"c0", "c3", "c6", "c9"}
    assert data["run"]["suite"] == "support"
    path = write_json(cur, result, tmp_path / "out" / "report.json")
    assert json.loads(path.read_text())["gate"]["reasons"] == result.reasons


def test_junit(tmp_path):
    cur, _base, result = failing()
    path = write_junit(cur, result, tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    names = [c.get("name") for c in cases]
    assert names == ["metric:recall", "metric:latency", "metric:faithfulness", "case:boom#0"]
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    assert suite.get("errors") == "1" and suite.get("skipped") == "1"
    recall_failure = cases[0].find("failure")
    assert recall_failure is not None and "regressed" in recall_failure.get("message", "")
    assert "c0" in (recall_failure.text or "")
    assert cases[1].find("failure") is None and cases[2].find("skipped") is not None
    error = cases[3].find("error")
    assert error is not None and error.get("message") == "TimeoutError: model took too long"


def test_junit_passing_run_has_no_failures(tmp_path):
    run = run_of([case(f"c{i}", 0.9) for i in range(3)])
    result = gate(run, thresholds={"recall": 0.5}, higher_is_better=HIB)
    suite = ET.parse(write_junit(run, result, tmp_path / "j.xml")).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert suite.findall(".//failure") == []


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_self_contained_and_escaped(tmp_path):
    cur, base, result = failing()
    path = write_html(cur, result, tmp_path / "r" / "report.html", baseline=base)
    page = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    for tag, attrs in parser.tags:
        for name in ("src", "href"):
            assert "http" not in (attrs.get(name) or ""), (tag, attrs)
        assert tag != "link"
        assert not (tag == "script" and "src" in attrs)
    assert "<script" not in page  # nothing executable at all, and the evil output is escaped
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "question c0 &amp; &lt;b&gt;more&lt;/b&gt;" in page
    assert "context &lt;two&gt;" in page and "<details>" in page
    # scores, pass/fail, trace ids, latency, cost, guard hits, baseline difference
    assert "FAIL" in page and "REGRESSED" in page and "trace-c3-0" in page
    assert "123" in page and "0.00042" in page and "pii · output · redact" in page
    assert "Cases that got worse" in page and "-0.800" in page
    assert "needs a judge model" in page and "TimeoutError" in page
    # the worse cases come first in the per-case table
    cases_part = page.split("<h2>Cases</h2>")[1]
    order = re.findall(r"<tr class=\"[a-z]*\"><td>([a-z0-9]+)", cases_part)
    assert order[:4] == ["c0", "c3", "c6", "c9"] and order[4] == "boom"


def test_html_without_baseline(tmp_path):
    run = run_of([case("only", 0.7, repeat=0), case("only", 0.8, repeat=1)])
    result = gate(run, thresholds={"recall": 0.5}, higher_is_better=HIB)
    page = write_html(run, result, tmp_path / "r.html").read_text()
    assert "PASS" in page and "Cases that got worse" not in page and "#1" in page
