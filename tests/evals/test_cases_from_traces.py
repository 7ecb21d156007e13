"""`cases_from_traces` and `cases_from_feedback` from Python (what `keel evals from-traces`
and `from-feedback` append)."""

from __future__ import annotations

from pathlib import Path

from keel.app import App
from keel.evals.datasets import (
    case_ids,
    cases_from_feedback,
    cases_from_traces,
    load_dataset,
    save_dataset,
)
from keel.ops.feedback import FeedbackStore
from keel.settings import Settings
from keel.testing import ScriptedChatModel


def test_traced_turns_and_feedback_become_cases(tmp_path: Path, model_cache_dir: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "refunds.md").write_text("# Refunds\n\nRefunds take 30 days.\n")
    (tmp_path / "keel.toml").write_text('[app]\nname = "loop"\n')
    app = App.from_config(
        tmp_path / "keel.toml",
        settings=Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir),
        model=ScriptedChatModel(script=["Refunds take 30 days [1].", "Ask support."]),
    )
    try:
        app.ingest()
        good = app.ask("how long do refunds take?")
        bad = app.ask("can I pay with bitcoin?", thread_id="t-bad")
        app.tracing.flush()
        store = FeedbackStore(app.engine)
        store.add(good.trace_id, 1.0)
        store.add(bad.trace_id, 0.0, correction="We accept cards only.")

        cases = {c.input: c for c in cases_from_traces(app)}
        assert set(cases) == {"how long do refunds take?", "can I pay with bitcoin?"}
        refund = cases["how long do refunds take?"]
        assert refund.id == f"trace-{good.trace_id}"
        assert refund.reference == "Refunds take 30 days [1]."
        assert refund.reference_doc_ids == ["docs/refunds.md"]
        assert refund.provenance["source"] == "trace"
        assert refund.provenance["trace_id"] == good.trace_id
        assert refund.provenance["app_version"] == app.version

        (only,) = cases_from_traces(app, thread_id="t-bad")
        assert only.input == "can I pay with bitcoin?" and only.reference == "Ask support."
        assert cases_from_traces(app, exclude={refund.id, only.id}) == []

        out = tmp_path / "evals" / "traces.jsonl"
        assert case_ids(out) == set()
        save_dataset(cases.values(), out)
        assert (
            case_ids(out)
            == {c.id for c in load_dataset(out).cases}
            == {
                refund.id,
                only.id,
            }
        )
        assert cases_from_traces(app, exclude=case_ids(out)) == []

        (fb,) = cases_from_feedback(app)  # scored at most 0.5: only the bad answer
        assert fb.input == "can I pay with bitcoin?"
        assert fb.reference == "We accept cards only."
        assert fb.provenance["source"] == "feedback"
        assert len(cases_from_feedback(app, max_score=None)) == 2
        assert cases_from_feedback(app, exclude={fb.id}) == []
    finally:
        app.close()
