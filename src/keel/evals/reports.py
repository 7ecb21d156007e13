"""Eval reports: a terminal table, JSON, JUnit XML and one self-contained HTML file.

The HTML report is a single file with inline CSS and no script, font or stylesheet from
anywhere: it opens offline, from a CI artifact or an e-mail attachment. Everything taken from
a run (inputs, outputs, contexts, reasons) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from keel.evals.gate import GateResult, MetricVerdict
    from keel.evals.runner import CaseResult, RunResult


def _num(value: float | None, fmt: str = ".3f") -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return format(value, fmt)


def _signed(value: float | None) -> str:
    return _num(value, "+.3f")


def _ci(low: float | None, high: float | None, fmt: str = ".3f") -> str:
    if low is None or high is None:
        return "—"
    return f"[{_num(low, fmt)}, {_num(high, fmt)}]"


def _status(v: MetricVerdict) -> str:
    if v.note is not None and v.note.startswith("skipped"):
        return "SKIP"
    if not v.passes_threshold:
        return "FAIL"
    if v.regression:
        return "REGRESSED"
    return "PASS"


def _verdict_reason(v: MetricVerdict, gate_result: GateResult) -> str | None:
    reasons = [r for r in gate_result.reasons if r.startswith(f"{v.metric}:")]
    return "; ".join(reasons) or None


# -- terminal ---------------------------------------------------------------------------------
def terminal_table(run: RunResult, gate_result: GateResult) -> Table:
    """Per metric: mean with CI, threshold, baseline, difference (+ is better), status."""
    status = "PASSED" if gate_result.passed else "FAILED"
    table = Table(title=f"{run.suite}: gate {status} ({len(run.cases)} case runs, {run.model})")
    for name in ("Metric", "Mean", "95% CI", "Threshold", "Baseline", "Δ (+ better)", "Δ 95% CI"):
        table.add_column(name, justify="left" if name == "Metric" else "right")
    table.add_column("Status")
    styles = {"PASS": "green", "FAIL": "red", "REGRESSED": "red", "SKIP": "yellow"}
    for v in gate_result.verdicts:
        agg = run.aggregates.get(v.metric, {})
        state = _status(v)
        threshold = "—"
        if v.threshold is not None:
            threshold = ("≥ " if v.higher_is_better else "≤ ") + _num(v.threshold)
        table.add_row(
            v.metric,
            _num(v.mean),
            _ci(agg.get("ci_low"), agg.get("ci_high")),
            threshold,
            _num(v.baseline_mean),
            _signed(v.diff),
            _ci(v.ci_low, v.ci_high, "+.3f"),
            f"[{styles[state]}]{state}[/]" + (f" ({v.note})" if v.note else ""),
        )
    return table


# -- JSON -------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """NaN and infinities become None: the JSON stays strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(run: RunResult, gate_result: GateResult) -> dict[str, Any]:
    """``{"passed", "run": run.to_json(), "gate": {verdicts, worse_cases, reasons, passed}}``."""
    return {
        "passed": gate_result.passed,
        "run": _clean(run.to_json()),
        "gate": _clean(asdict(gate_result)),
    }


# -- JUnit ------------------------------------------------------------------------------------
def write_junit(run: RunResult, gate_result: GateResult, path: str | Path) -> Path:
    """One testcase per metric verdict (a failure carries the reason), one per errored case."""
    suite_el = ET.Element("testsuite", name=f"keel.eval.{run.suite}")
    failures = errors = skipped = 0
    for v in gate_result.verdicts:
        case = ET.SubElement(
            suite_el, "testcase", classname=f"keel.eval.{run.suite}", name=f"metric:{v.metric}"
        )
        state = _status(v)
        details = (
            f"mean={_num(v.mean, '.4g')} threshold={_num(v.threshold, '.4g')} "
            f"baseline={_num(v.baseline_mean, '.4g')} diff={_num(v.diff, '+.4g')} "
            f"ci={_ci(v.ci_low, v.ci_high, '+.4g')} pairs={v.n_pairs} "
            f"only_current={v.only_current} only_baseline={v.only_baseline}"
        )
        if state in ("FAIL", "REGRESSED"):
            failures += 1
            reason = _verdict_reason(v, gate_result) or f"{v.metric}: {state.lower()}"
            failure = ET.SubElement(case, "failure", message=reason, type=state.lower())
            worse = [w for w in gate_result.worse_cases if w["metric"] == v.metric]
            failure.text = details + "".join(
                f"\n{w['case_id']}: {_num(w['baseline'], '.4g')} -> {_num(w['current'], '.4g')}"
                for w in worse
            )
        elif state == "SKIP":
            skipped += 1
            ET.SubElement(case, "skipped", message=v.note or "skipped")
        else:
            ET.SubElement(case, "system-out").text = details
    for c in run.cases:
        if c.error is None:
            continue
        errors += 1
        case = ET.SubElement(
            suite_el,
            "testcase",
            classname=f"keel.eval.{run.suite}.cases",
            name=f"case:{c.case_id}#{c.repeat}",
        )
        err = ET.SubElement(case, "error", message=c.error.splitlines()[0] if c.error else "")
        err.text = f"trace_id={c.trace_id}\n{c.error}"
    suite_el.set("tests", str(len(suite_el)))
    suite_el.set("failures", str(failures))
    suite_el.set("errors", str(errors))
    suite_el.set("skipped", str(skipped))
    root = ET.Element("testsuites")
    root.append(suite_el)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out


# -- HTML -------------------------------------------------------------------------------------
REPORT_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#5b6478;font-size:13px}.meta code{background:#f1f3f7;padding:1px 4px;border-radius:3px}
.banner{display:inline-block;padding:4px 12px;border-radius:4px;font-weight:600;color:#fff}
.pass{background:#1f8a4c}.fail{background:#c23434}.skip{background:#b7791f}
table{border-collapse:collapse;width:100%;margin-top:6px}
th,td{border:1px solid #dde1ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f4f6fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.worse{color:#c23434;font-weight:600}.better{color:#1f8a4c}
.text{max-width:420px;white-space:pre-wrap;word-break:break-word}
details summary{cursor:pointer;color:#3452a3}details ol{margin:4px 0;padding-left:20px}
tr.errored td{background:#fff4f4}ul.reasons li{color:#c23434}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _badge(state: str) -> str:
    cls = {"PASS": "pass", "SKIP": "skip"}.get(state, "fail")
    return f'<span class="banner {cls}">{_e(state)}</span>'


def _diff_cell(diff: float | None, margin: float) -> str:
    if diff is None or not math.isfinite(diff):
        return '<td class="num">—</td>'
    cls = "worse" if diff < -margin else ("better" if diff > margin else "")
    return f'<td class="num {cls}">{_e(_signed(diff))}</td>'


def _case_order(
    run: RunResult, gate_result: GateResult, baseline: RunResult | None
) -> list[CaseResult]:
    rank: dict[str, int] = {}
    for i, w in enumerate(gate_result.worse_cases):
        rank.setdefault(str(w["case_id"]), i)
    first = len(gate_result.worse_cases)
    return sorted(
        run.cases,
        key=lambda c: (rank.get(c.case_id, first), c.error is None, c.case_id, c.repeat),
    )


def _metrics_section(run: RunResult, gate_result: GateResult) -> str:
    rows = []
    for v in gate_result.verdicts:
        agg = run.aggregates.get(v.metric, {})
        threshold = "—"
        if v.threshold is not None:
            threshold = ("≥ " if v.higher_is_better else "≤ ") + _num(v.threshold)
        details = f"{v.n_pairs} paired"
        if v.only_current or v.only_baseline:
            details += f", {v.only_current} only in this run, {v.only_baseline} only in baseline"
        if v.note:
            details += f"; {v.note}"
        rows.append(
            "<tr>"
            f"<td>{_e(v.metric)}</td>"
            f'<td class="num">{_e(_num(v.mean))}</td>'
            f'<td class="num">{_e(_ci(agg.get("ci_low"), agg.get("ci_high")))}</td>'
            f'<td class="num">{_e(agg.get("n", "—"))}</td>'
            f'<td class="num">{_e(threshold)}</td>'
            f'<td class="num">{_e(_num(v.baseline_mean))}</td>'
            + _diff_cell(v.diff, v.margin)
            + f'<td class="num">{_e(_ci(v.ci_low, v.ci_high, "+.3f"))}</td>'
            f"<td>{_badge(_status(v))}</td>"
            f"<td>{_e(details)}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>Metric</th><th>Mean</th><th>95% CI</th><th>n</th><th>Threshold</th>"
        "<th>Baseline</th><th>Δ (+ better)</th><th>Δ 95% CI</th><th>Status</th>"
        "<th>Details</th></tr>"
    )
    return f"<h2>Scores</h2><table>{head}{''.join(rows)}</table>"


def _worse_section(gate_result: GateResult) -> str:
    if not gate_result.worse_cases:
        return ""
    rows = "".join(
        "<tr>"
        f"<td>{_e(w['case_id'])}</td><td>{_e(w['metric'])}</td>"
        f'<td class="num">{_e(_num(w["baseline"]))}</td>'
        f'<td class="num">{_e(_num(w["current"]))}</td>'
        f'<td class="num worse">{_e(_signed(w.get("diff")))}</td>'
        "</tr>"
        for w in gate_result.worse_cases
    )
    return (
        "<h2>Cases that got worse (worst first)</h2><table><tr><th>Case</th><th>Metric</th>"
        f"<th>Baseline</th><th>Current</th><th>Δ (+ better)</th></tr>{rows}</table>"
    )


def _contexts(contexts: list[str], doc_ids: list[str]) -> str:
    if not contexts and not doc_ids:
        return "—"
    items = "".join(f'<li class="text">{_e(c)}</li>' for c in contexts)
    ids = f"<div>docs: {_e(', '.join(doc_ids))}</div>" if doc_ids else ""
    return f"<details><summary>{len(contexts)} context(s)</summary>{ids}<ol>{items}</ol></details>"


def _guard_hits(events: list[dict[str, Any]]) -> str:
    if not events:
        return "—"
    parts = []
    for ev in events:
        name = ev.get("guard") or ev.get("name") or ev.get("validator") or "guard"
        point = ev.get("point") or ev.get("hook")
        action = ev.get("action") or ev.get("outcome")
        label = " · ".join(str(p) for p in (name, point, action) if p)
        parts.append(f"<li>{_e(label)}</li>")
    return f"<ul>{''.join(parts)}</ul>"


def _cases_section(run: RunResult, gate_result: GateResult, baseline: RunResult | None) -> str:
    metrics = [v.metric for v in gate_result.verdicts]
    for c in run.cases:
        for name in c.scores:
            if name not in metrics:
                metrics.append(name)
    margins = {v.metric: v.margin for v in gate_result.verdicts}
    hib = {v.metric: v.higher_is_better for v in gate_result.verdicts}
    cur_means = {m: run.per_case(m) for m in metrics}
    base_means = {m: baseline.per_case(m) for m in metrics} if baseline is not None else {}

    head = (
        "<tr><th>Case</th><th>Input</th><th>Output</th><th>Contexts</th>"
        + "".join(f"<th>{_e(m)}</th>" for m in metrics)
        + "<th>Trace id</th><th>Latency ms</th><th>Cost $</th><th>Guard hits</th></tr>"
    )
    rows = []
    for c in _case_order(run, gate_result, baseline):
        cells = []
        for m in metrics:
            value = c.scores.get(m)
            text = _e(_num(value))
            base = base_means.get(m, {}).get(c.case_id)
            cur = cur_means[m].get(c.case_id)
            cls = ""
            if base is not None and cur is not None:
                diff = (cur - base) * (1.0 if hib.get(m, True) else -1.0)
                margin = margins.get(m, 0.0)
                cls = "worse" if diff < -margin else ("better" if diff > margin else "")
                text += f"<br><small>Δ {_e(_signed(diff))} vs {_e(_num(base))}</small>"
            cells.append(f'<td class="num {cls}">{text}</td>')
        output = _e(c.output)
        if c.error is not None:
            output += f'<div class="worse">error: {_e(c.error)}</div>'
        case_label = _e(c.case_id) + (f" <small>#{c.repeat}</small>" if c.repeat else "")
        rows.append(
            f'<tr class="{"errored" if c.error is not None else ""}">'
            f"<td>{case_label}</td>"
            f'<td class="text">{_e(c.input)}</td>'
            f'<td class="text">{output}</td>'
            f"<td>{_contexts(list(c.contexts), list(c.doc_ids))}</td>"
            + "".join(cells)
            + f"<td><code>{_e(c.trace_id)}</code></td>"
            f'<td class="num">{_e(_num(c.latency_ms, ".0f"))}</td>'
            f'<td class="num">{_e(_num(c.cost_usd, ".5f"))}</td>'
            f"<td>{_guard_hits(list(c.guard_events))}</td>"
            "</tr>"
        )
    return f"<h2>Cases</h2><table>{head}{''.join(rows)}</table>"


def render_body(run: RunResult, gate_result: GateResult, baseline: RunResult | None = None) -> str:
    """The report's content (what goes inside ``<body>``), styled by :data:`REPORT_CSS`: the
    HTML report and the web console's run page show the same thing."""
    state = "PASS" if gate_result.passed else "FAIL"
    reasons = ""
    if gate_result.reasons:
        reasons = (
            '<ul class="reasons">'
            + "".join(f"<li>{_e(r)}</li>" for r in gate_result.reasons)
            + "</ul>"
        )
    skipped = ""
    if run.skipped_metrics:
        skipped = (
            "<h2>Skipped metrics</h2><ul>"
            + "".join(f"<li>{_e(m)}: {_e(why)}</li>" for m, why in run.skipped_metrics.items())
            + "</ul>"
        )
    base_meta = ""
    if baseline is not None:
        base_meta = (
            f"<div class='meta'>baseline: app <code>{_e(baseline.app_version)}</code>, "
            f"model <code>{_e(baseline.model)}</code>, {_e(baseline.started_at)}</div>"
        )
    meta = (
        f"<div class='meta'>dataset <code>{_e(run.dataset_version)}</code> · app "
        f"<code>{_e(run.app_version)}</code> · model <code>{_e(run.model)}</code> · "
        f"started {_e(run.started_at)} · {len(run.cases)} case runs</div>"
    )
    return (
        f"<h1>keel eval: {_e(run.suite)} {_badge(state)}</h1>{meta}{base_meta}{reasons}"
        + _metrics_section(run, gate_result)
        + _worse_section(gate_result)
        + skipped
        + _cases_section(run, gate_result, baseline)
    )


def render_html(run: RunResult, gate_result: GateResult, baseline: RunResult | None = None) -> str:
    """The report as one HTML string (inline CSS, no scripts, nothing fetched)."""
    state = "PASS" if gate_result.passed else "FAIL"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>keel eval: {_e(run.suite)} ({state})</title><style>{REPORT_CSS}</style></head>"
        f"<body>{render_body(run, gate_result, baseline)}</body></html>\n"
    )


def write_html(
    run: RunResult, gate_result: GateResult, path: str | Path, baseline: RunResult | None = None
) -> Path:
    """Write the self-contained HTML report to ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(run, gate_result, baseline), encoding="utf-8")
    return out


def write_json(run: RunResult, gate_result: GateResult, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(run, gate_result), indent=2), encoding="utf-8")
    return out


__all__ = [
    "REPORT_CSS",
    "render_body",
    "render_html",
    "terminal_table",
    "to_json",
    "write_html",
    "write_json",
    "write_junit",
]
