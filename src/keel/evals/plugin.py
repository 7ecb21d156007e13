"""A pytest plugin: ``pytest evals/`` runs evaluation suites as tests, with the same gate as
``keel eval`` (registered as the ``keel`` pytest11 entry point).

Any ``*.yaml`` file under a folder named ``evals`` that holds a suite (``dataset`` and
``metrics`` keys) is collected as one test; it fails when the gate fails, naming the reasons
and the cases that got worse. The ``keel_app`` fixture builds the App of the ``keel.toml``
given with ``--keel-config`` (default: ``./keel.toml``) for hand-written tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("keel")
    group.addoption(
        "--keel-config",
        default="keel.toml",
        help="keel.toml for the keel_app fixture (default: ./keel.toml)",
    )


def _is_suite(path: Path) -> bool:
    if path.suffix not in (".yaml", ".yml") or "evals" not in path.parts:
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    return "dataset:" in text and "metrics:" in text


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if _is_suite(file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        yield SuiteItem.from_parent(self, name=self.path.stem)


class SuiteFailed(Exception):
    pass


class SuiteItem(pytest.Item):
    def runtest(self) -> None:
        from keel.evals.check import evaluate

        result = evaluate(self.path)
        self.user_properties.append(("metrics", {v.metric: v.mean for v in result.result.verdicts}))
        if not result.result.passed:
            lines = list(result.result.reasons)
            for case in result.result.worse_cases[:10]:
                lines.append(
                    f"  worse: {case['case_id']} {case['metric']} "
                    f"{case['baseline']:.3f} -> {case['current']:.3f}"
                )
            raise SuiteFailed("\n".join(lines))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, SuiteFailed):
            return f"evaluation gate failed for {self.path.name}:\n{excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"eval suite {self.name}"


@pytest.fixture
def keel_app(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The App of ``--keel-config`` (closed after the test)."""
    from keel.app import App

    app = App.from_config(Path(str(request.config.getoption("--keel-config"))))
    yield app
    app.close()
