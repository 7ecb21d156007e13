"""Evaluation suites: ``evals/<name>.yaml`` names the app, the dataset, the metrics with their
thresholds, repeats, concurrency, the judge model and the baseline file::

    name: smoke
    app: ../keel.toml          # relative to the suite file; default: ../keel.toml
    dataset: cases.jsonl       # relative to the suite file
    metrics:
      recall_at_k: {k: 5, threshold: 0.8}
      latency_ms: {}
    repeats: 1
    concurrency: 4
    timeout_s: 60
    retries: 1
    judge: null                # a model id for judge metrics
    baseline: baseline.json    # optional; relative to the suite file
    margin: 0.02               # a regression must be worse than this to fail the gate
    max_error_rate: 0          # share of cases that may error before the gate fails
    allow_skipped: []          # metrics that may go uncomputed (no judge...) without failing
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from keel.errors import ConfigError
from keel.evals.metrics import METRICS


class Suite(BaseModel):
    """A parsed suite file; ``app_path``, ``dataset_path`` and ``baseline_path`` are absolute."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    app: str = "../keel.toml"
    dataset: str
    metrics: dict[str, dict[str, Any]] = Field(min_length=1)
    repeats: int = Field(default=1, ge=1, le=100)
    concurrency: int = Field(default=4, ge=1, le=256)
    concurrency_gc_freeze: bool = Field(
        default=False,
        description="Freeze the objects that exist before the run (gc.freeze) while the cases "
        "run, so the garbage collector's full passes do not stop every case; process-wide, "
        "so off unless asked for.",
    )
    timeout_s: float = Field(default=60.0, gt=0)
    retries: int = Field(default=1, ge=0, le=10)
    judge: str | None = None
    baseline: str | None = None
    margin: float = Field(default=0.02, ge=0)
    max_error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of cases that may error; more fails."
    )
    allow_skipped: list[str] = Field(
        default_factory=list,
        description="Metrics that may go uncomputed (no judge, a judge with no readable "
        "verdict) without failing the gate; every other such metric fails it.",
    )

    path: Path | None = Field(default=None, exclude=True)
    app_path: Path = Field(default=Path("keel.toml"), exclude=True)
    dataset_path: Path = Field(default=Path("cases.jsonl"), exclude=True)
    baseline_path: Path | None = Field(default=None, exclude=True)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("must be a mapping of metric name to options")
        out: dict[str, dict[str, Any]] = {}
        for name, options in value.items():
            spec = METRICS.get(str(name))
            if spec is None:
                raise ValueError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
            opts = {} if options is None else options
            if not isinstance(opts, dict):
                raise ValueError(f"{name}: options must be a mapping, e.g. {{threshold: 0.8}}")
            allowed = {"threshold", *spec.options}
            unknown = sorted(set(opts) - allowed)
            if unknown:
                raise ValueError(
                    f"{name}: unknown option(s) {', '.join(unknown)}; allowed: "
                    f"{', '.join(sorted(allowed))}"
                )
            threshold = opts.get("threshold")
            if threshold is not None and (
                isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            ):
                raise ValueError(f"{name}: threshold must be a number")
            k = opts.get("k")
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
                raise ValueError(f"{name}: k must be a positive integer")
            out[str(name)] = dict(opts)
        return out

    @model_validator(mode="after")
    def _allowed_are_metrics(self) -> Suite:
        unknown = sorted(set(self.allow_skipped) - set(self.metrics))
        if unknown:
            raise ValueError(
                f"allow_skipped names metrics the suite does not have: {', '.join(unknown)}"
            )
        return self

    def threshold(self, metric: str) -> float | None:
        value = self.metrics.get(metric, {}).get("threshold")
        return None if value is None else float(value)

    def options(self, metric: str) -> dict[str, Any]:
        """The metric's options without ``threshold``."""
        return {k: v for k, v in self.metrics.get(metric, {}).items() if k != "threshold"}

    def resolve(self, base: Path) -> Suite:
        """A copy whose paths are resolved against ``base`` (the suite file's folder)."""
        app = (base / self.app).resolve()
        if app.is_dir():
            app = app / "keel.toml"
        return self.model_copy(
            update={
                "app_path": app,
                "dataset_path": (base / self.dataset).resolve(),
                "baseline_path": (base / self.baseline).resolve() if self.baseline else None,
            }
        )


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file; problems raise :class:`~keel.errors.ConfigError`
    with a one-line reason."""
    import yaml

    p = Path(path).resolve()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the suite: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a suite must be a mapping (name, dataset, metrics, ...)")
    data.setdefault("name", p.stem)
    for internal in ("path", "app_path", "dataset_path", "baseline_path"):
        if internal in data:
            raise ConfigError(f"{p}: unknown key {internal!r}")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(part) for part in err["loc"]) or "suite"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{p}: {loc}: {msg}") from None
    resolved = suite.resolve(p.parent)
    resolved.path = p
    return resolved


__all__ = ["Suite", "load_suite"]


def app_suite(app: Any, *, purpose: str) -> Suite | None:
    """The app's eval suite: the one suite file in ``evals/`` beside its keel.toml whose
    ``app`` is this app (None when there is none; :class:`UsageError` naming them when there
    are several: ``purpose`` says what it was wanted for)."""
    from keel.errors import UsageError

    base = Path(app.config.base_dir)
    folder = base / "evals"
    if not folder.is_dir():
        return None
    config = base / "keel.toml"
    config_file = config.resolve() if config.is_file() else None
    suites = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            suite = load_suite(path)
        except Exception:  # not a suite file (or a broken one)
            continue
        if config_file is None or suite.app_path.resolve() == config_file:
            suites.append(suite)
    if not suites:
        return None
    if len(suites) > 1:
        names = ", ".join(str(s.path) for s in suites)
        raise UsageError(f"several eval suites could be {purpose} ({names}): give one")
    return suites[0]
