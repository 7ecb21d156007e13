"""Evaluation: datasets, suites, the runner, metrics and LLM judges, the baseline gate.

The names below are this area's public API (pinned by ``tests/test_exported_members.py``);
each is imported from its module the first time it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel._lazy import lazy_exports

if TYPE_CHECKING:
    from keel.evals.check import SuiteGate, evaluate
    from keel.evals.compare import ModelComparison, compare_models
    from keel.evals.datasets import (
        Case,
        Dataset,
        cases_from_feedback,
        cases_from_traces,
        load_dataset,
    )
    from keel.evals.drift_reference import default_reference
    from keel.evals.judges import PairwiseJudge, RubricJudge, judge_model, ragas_llm
    from keel.evals.runner import CaseResult, RunResult, arun_suite, run_suite
    from keel.evals.store import EvalRunStore
    from keel.evals.suites import Suite, load_suite

_EXPORTS = {
    "Case": "keel.evals.datasets",
    "Dataset": "keel.evals.datasets",
    "load_dataset": "keel.evals.datasets",
    "cases_from_traces": "keel.evals.datasets",
    "cases_from_feedback": "keel.evals.datasets",
    "Suite": "keel.evals.suites",
    "load_suite": "keel.evals.suites",
    "run_suite": "keel.evals.runner",
    "arun_suite": "keel.evals.runner",
    "RunResult": "keel.evals.runner",
    "CaseResult": "keel.evals.runner",
    "evaluate": "keel.evals.check",
    "SuiteGate": "keel.evals.check",
    "compare_models": "keel.evals.compare",
    "ModelComparison": "keel.evals.compare",
    "RubricJudge": "keel.evals.judges",
    "PairwiseJudge": "keel.evals.judges",
    "judge_model": "keel.evals.judges",
    "ragas_llm": "keel.evals.judges",
    "default_reference": "keel.evals.drift_reference",
    "EvalRunStore": "keel.evals.store",
}
__all__ = [
    "Case",
    "CaseResult",
    "Dataset",
    "EvalRunStore",
    "ModelComparison",
    "PairwiseJudge",
    "RubricJudge",
    "RunResult",
    "Suite",
    "SuiteGate",
    "arun_suite",
    "cases_from_feedback",
    "cases_from_traces",
    "compare_models",
    "default_reference",
    "evaluate",
    "judge_model",
    "load_dataset",
    "load_suite",
    "ragas_llm",
    "run_suite",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
