"""What production questions are compared with when no reference is given to
``keel monitor drift``: the deployed release's evaluated dataset, else the app's eval suite.

A release created with ``keel release create --gate SUITE`` keeps its gate run, whose cases
are the questions that release was evaluated on: the train/serve skew reference of what
serves. An app with no deployed, evaluated release falls back to its eval suite (a suite file
in ``evals/`` beside ``keel.toml`` whose ``app`` is this app).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keel.errors import UsageError

__all__ = ["DriftReference", "default_reference"]


@dataclass(frozen=True)
class DriftReference:
    """Reference questions and where they came from (printed with the report)."""

    questions: list[str]
    label: str


def default_reference(app: Any) -> DriftReference:
    """The deployed release's evaluated dataset, else the app's eval suite dataset;
    :class:`UsageError` naming both options when neither exists."""
    found = _from_release(app)
    if found is not None:
        return found
    found = _from_suite(app)
    if found is not None:
        return found
    raise UsageError(
        "no reference for drift: no deployed release was evaluated (keel release create "
        "--gate SUITE) and no eval suite for this app in evals/; give --reference DATASET "
        "or --reference-window"
    )


def _from_release(app: Any) -> DriftReference | None:
    from keel.evals.runner import RunResult
    from keel.ops.releases import ReleaseStore

    store = ReleaseStore(app.engine, app.name)
    stable = store.state().get("stable")
    release = store.get(stable) if stable else None
    run = (release.gate or {}).get("run") if release is not None else None
    if release is None or not run:
        return None
    questions = _unique(c.input for c in RunResult.from_json(run).cases)
    if not questions:
        return None
    suite = (release.gate or {}).get("suite") or "its gate suite"
    return DriftReference(questions, f"the deployed release {release.id}'s eval dataset ({suite})")


def _from_suite(app: Any) -> DriftReference | None:
    from keel.evals.datasets import load_dataset
    from keel.evals.suites import app_suite

    suite = app_suite(app, purpose="the drift reference")
    if suite is None:
        return None
    questions = _unique(c.input for c in load_dataset(suite.dataset_path).cases)
    return DriftReference(questions, f"the app's eval suite {suite.name} ({suite.dataset_path})")


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(str(i) for i in items if str(i).strip()))
