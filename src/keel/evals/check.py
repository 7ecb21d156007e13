"""One evaluation as ``keel eval`` and the pytest plugin run it: run the suite, gate it
against its thresholds and baseline, write the reports. :class:`SuiteGate` is the same
evaluation as a release gate (``keel.ops.releases.create_release``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.errors import UsageError
from keel.evals.gate import GateResult, gate
from keel.evals.metrics import METRICS
from keel.evals.runner import Progress, RunResult, run_suite
from keel.evals.suites import Suite, load_suite

if TYPE_CHECKING:
    from keel.ops.releases import GateOutcome


@dataclass
class Evaluation:
    suite: Suite
    run: RunResult
    result: GateResult
    baseline: RunResult | None
    run_id: str | None = None
    """The id the run was recorded under (``keel_eval_runs``), when it was recorded."""


def evaluate(
    suite_path: str | Path,
    *,
    baseline: Path | None = None,
    baseline_run: RunResult | None = None,
    model: Any = None,
    app: Any = None,
    progress: Progress | None = None,
    record: bool = False,
) -> Evaluation:
    """Run and gate a suite. ``baseline`` (a file) or ``baseline_run`` (a run in hand, e.g.
    the stable release's gate run) overrides the suite's own baseline file.
    ``record``: keep the run and its verdict in the app's database (what ``keel eval`` does;
    the web console lists them)."""
    suite = load_suite(suite_path)
    owned = app is None and record
    if owned:
        from keel.app import App

        app = App.from_config(suite.app_path, model=model)
    try:
        run = run_suite(suite, app=app, model=model, progress=progress)
        base_path = baseline or suite.baseline_path
        base = baseline_run
        if base is None and base_path is not None and base_path.exists():
            base = RunResult.load(base_path)
        result = gate(
            run,
            thresholds={m: suite.threshold(m) for m in suite.metrics},
            higher_is_better={m: METRICS[m].higher_is_better for m in suite.metrics},
            baseline=base,
            margin=suite.margin,
            max_error_rate=suite.max_error_rate,
            allow_skipped=suite.allow_skipped,
        )
        evaluation = Evaluation(suite, run, result, base)
        if record and app is not None:
            from keel.evals.store import EvalRunStore

            evaluation.run_id = EvalRunStore(app.engine).record(
                run,
                suite=suite.name,
                passed=result.passed,
                app_version=run.app_version or None,
                gate=asdict(result),
                baseline=base,
            )
        return evaluation
    finally:
        if owned and app is not None:
            app.close()


@dataclass(frozen=True)
class SuiteGate:
    """An eval suite as a release gate: ``create_release(app, gate=SuiteGate(path))``. Each
    call evaluates the app on the suite, gates it against the given baseline run (else the
    suite's baseline file) and records the run in the app's database."""

    suite: str | Path

    def __post_init__(self) -> None:
        if not Path(self.suite).is_file():
            raise UsageError(f"no suite file {self.suite}")

    def __call__(self, app: Any, *, baseline_run: Mapping[str, Any] | None = None) -> GateOutcome:
        from keel.ops.releases import GateOutcome

        result = evaluate(
            self.suite,
            app=app,
            baseline_run=RunResult.from_json(dict(baseline_run)) if baseline_run else None,
            record=True,
        )
        return GateOutcome(
            suite=result.suite.name,
            passed=result.result.passed,
            reasons=list(result.result.reasons),
            dataset_version=result.run.dataset_version,
            run=result.run.to_json(),
            run_id=result.run_id,
        )
