"""Evaluation datasets: cases in JSONL or YAML, versioned by the hash of their content.

A case is one question (``input``) or a conversation (``conversation``: ``[{role, content}]``,
the last user message is the question), with what is known about the right answer: a
``reference`` answer, ``reference_contexts`` (passages) or ``reference_doc_ids`` (documents
that should be retrieved), ``expected_tool_calls`` (``[{name, args}]``), ``tags`` and
``provenance`` (where the case came from: by hand, feedback, a trace, a self-test).

:func:`retrieval_selftests` makes cases offline from an app's own index: a sentence of a chunk
is the query and that chunk's document is expected, chosen by a seeded random generator.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from keel.app import App

_FIELDS = (
    "id",
    "input",
    "conversation",
    "reference",
    "reference_contexts",
    "reference_doc_ids",
    "expected_tool_calls",
    "tags",
    "provenance",
)
_ROLES = frozenset({"user", "human", "assistant", "ai", "system", "tool"})


@dataclass
class Case:
    """One evaluation case (see the module doc)."""

    id: str
    input: str
    conversation: list[dict[str, Any]] | None = None
    reference: str | None = None
    reference_contexts: list[str] = field(default_factory=list)
    reference_doc_ids: list[str] = field(default_factory=list)
    expected_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every field (the canonical form the dataset version is computed from)."""
        return asdict(self)

    def to_record(self) -> dict[str, Any]:
        """The fields that are set, as a dataset file stores them."""
        out: dict[str, Any] = {"id": self.id}
        if self.conversation is not None:
            out["conversation"] = self.conversation
        else:
            out["input"] = self.input
        for key, value in self.to_dict().items():
            if key not in ("id", "input", "conversation") and value not in (None, [], {}):
                out[key] = value
        return out

    @property
    def history(self) -> list[dict[str, Any]]:
        """The messages before the question (empty for a single-turn case)."""
        if not self.conversation:
            return []
        return list(self.conversation[:-1])

    @classmethod
    def from_dict(cls, data: Any) -> Case:
        """A case from a parsed record; ``ValueError`` says what is wrong with it."""
        if not isinstance(data, dict):
            raise ValueError(f"a case must be a mapping, not {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
        case_id = data.get("id")
        if isinstance(case_id, bool) or not isinstance(case_id, (str, int)) or case_id == "":
            raise ValueError("'id' is required (a non-empty string)")
        conversation = data.get("conversation")
        question = data.get("input")
        if conversation is not None:
            conversation = _conversation(conversation)
            last = conversation[-1]
            if last["role"] not in ("user", "human"):
                raise ValueError("the last message of 'conversation' must be the user's")
            if question is None:
                question = str(last["content"])
        if not isinstance(question, str) or not question.strip():
            raise ValueError("'input' (a non-empty string) or 'conversation' is required")
        reference = data.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise ValueError("'reference' must be a string")
        tool_calls = data.get("expected_tool_calls") or []
        if not isinstance(tool_calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in tool_calls
        ):
            raise ValueError("'expected_tool_calls' must be a list of {name, args}")
        for call in tool_calls:
            if not isinstance(call.get("args", {}), dict):
                raise ValueError("'expected_tool_calls': 'args' must be a mapping")
        provenance = data.get("provenance") or {}
        if not isinstance(provenance, dict):
            raise ValueError("'provenance' must be a mapping")
        return cls(
            id=str(case_id),
            input=question,
            conversation=conversation,
            reference=reference,
            reference_contexts=_strings(data, "reference_contexts"),
            reference_doc_ids=_strings(data, "reference_doc_ids"),
            expected_tool_calls=[dict(c) for c in tool_calls],
            tags=_strings(data, "tags"),
            provenance=dict(provenance),
        )


def _strings(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key) or []
    if isinstance(value, str) or not isinstance(value, list):
        raise ValueError(f"{key!r} must be a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key!r} must be a list of strings")
    return list(value)


def _conversation(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ValueError("'conversation' must be a non-empty list of {role, content}")
    out: list[dict[str, Any]] = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError("'conversation' must be a non-empty list of {role, content}")
        if message.get("role") not in _ROLES:
            raise ValueError(f"'conversation': unknown role {message.get('role')!r}")
        out.append(dict(message))
    return out


@dataclass
class Dataset:
    """Cases, the file they came from, and ``version``: the content hash of the cases."""

    cases: list[Case]
    path: Path | None = None
    version: str = ""

    def __post_init__(self) -> None:
        if not self.version:
            self.version = dataset_version(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Any:
        return iter(self.cases)


def dataset_version(cases: Sequence[Case]) -> str:
    """The first 12 hex digits of the sha256 of the cases' canonical JSON."""
    canonical = json.dumps(
        [c.to_dict() for c in cases], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def load_dataset(path: str | Path) -> Dataset:
    """Cases from a ``.jsonl`` file (one per line) or ``.yaml``/``.yml`` (a list, or
    ``{cases: [...]}``). Problems raise :class:`~keel.errors.ConfigError` naming file:line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the dataset: {exc.strerror or exc}") from exc
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        records = _jsonl_records(p, text)
    elif suffix in (".yaml", ".yml"):
        records = _yaml_records(p, text)
    else:
        raise ConfigError(f"{p}: a dataset must be .jsonl, .yaml or .yml")
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for line, record in records:
        try:
            case = Case.from_dict(record)
        except ValueError as exc:
            raise ConfigError(f"{p}:{line}: {exc}") from None
        if case.id in seen:
            raise ConfigError(
                f"{p}:{line}: duplicate case id {case.id!r} (first on line {seen[case.id]})"
            )
        seen[case.id] = line
        cases.append(case)
    return Dataset(cases, p)


def _jsonl_records(path: Path, text: str) -> list[tuple[int, Any]]:
    records: list[tuple[int, Any]] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{n}: not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
    return records


def _yaml_records(path: Path, text: str) -> list[tuple[int, Any]]:
    import yaml

    try:
        data = yaml.safe_load(text)
        root: Any = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    if data is None:
        return []
    items_node: Any = root
    if isinstance(data, dict):
        if set(data) != {"cases"} or not isinstance(data["cases"], list):
            raise ConfigError(f"{path}:1: expected a list of cases, or a mapping with 'cases'")
        items_node = next(v for k, v in root.value if k.value == "cases")
        data = data["cases"]
    if not isinstance(data, list):
        raise ConfigError(f"{path}:1: expected a list of cases, or a mapping with 'cases'")
    lines = [node.start_mark.line + 1 for node in items_node.value]
    return list(zip(lines, data, strict=True))


def save_dataset(cases: Iterable[Case], path: str | Path) -> None:
    """Append ``cases`` to a JSONL file (created if missing). Ids already in the file or
    repeated among ``cases`` raise :class:`~keel.errors.UsageError` before anything is
    written; a file that does not end with a newline gets one first."""
    p = Path(path)
    if p.suffix.lower() != ".jsonl":
        raise UsageError(f"{p}: cases are saved as JSONL (.jsonl)")
    items = list(cases)
    existing: set[str] = set()
    tail = b""
    if p.exists():
        existing = {c.id for c in load_dataset(p).cases}
        with p.open("rb") as fh:
            fh.seek(0, 2)
            if fh.tell():
                fh.seek(-1, 2)
                tail = fh.read(1)
    seen: set[str] = set()
    for case in items:
        if case.id in existing or case.id in seen:
            raise UsageError(f"{p}: a case with id {case.id!r} is already there")
        seen.add(case.id)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as fh:
        if tail and tail != b"\n":
            fh.write("\n")
        for case in items:
            fh.write(json.dumps(case.to_record(), ensure_ascii=False) + "\n")


def _pick_sentence(text: str) -> str | None:
    from keel.rag.sentences import split_sentences

    candidates = [s.strip() for s in split_sentences(text) if len(s.split()) >= 6]
    if not candidates:
        return None
    moderate = [s for s in candidates if len(s.split()) <= 40]
    if moderate:
        return max(moderate, key=lambda s: len(s.split()))  # first of the longest
    return min(candidates, key=lambda s: len(s.split()))


def retrieval_selftests(app: App, n: int, seed: int) -> list[Case]:
    """``n`` retrieval self-tests made offline from the app's index: for chunks chosen by a
    random generator seeded with ``seed``, a sentence of the chunk (a long one, of at least
    six words) is the query and the chunk's document is expected. Chunks are sorted by id
    first, so the choice does not depend on the order the vector store returns them in."""
    if n < 0:
        raise UsageError("n must be >= 0")
    chunks = sorted(app.store().iter_chunks(), key=lambda c: c.id)
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    cases: list[Case] = []
    used: set[str] = set()
    for index in order:
        if len(cases) >= n:
            break
        chunk = chunks[index]
        sentence = _pick_sentence(chunk.text)
        if sentence is None or sentence in used:
            continue
        used.add(sentence)
        cases.append(
            Case(
                id=f"selftest-{seed}-{len(cases) + 1:04d}",
                input=sentence,
                reference_contexts=[chunk.text],
                reference_doc_ids=[chunk.doc_id],
                tags=["selftest"],
                provenance={"source": "selftest", "chunk_id": chunk.id, "seed": seed},
            )
        )
    return cases


def case_ids(path: str | Path) -> set[str]:
    """The ids of the cases in a dataset file; none when the file does not exist yet."""
    p = Path(path)
    return {c.id for c in load_dataset(p).cases} if p.exists() else set()


def _cited_docs(app: App, trace_id: str) -> list[str]:
    """The documents a traced turn cited, in the order its spans name them."""
    found = app.tracing.get(trace_id) or {"spans": []}
    stack, docs = list(found["spans"]), []
    while stack:
        span = stack.pop()
        stack.extend(span["children"])
        for cite in span["attributes"].get("keel.citations", []) or []:
            doc = str(cite).split("#", 1)[0]
            if doc not in docs:
                docs.append(doc)
    return docs


def cases_from_traces(
    app: App,
    *,
    limit: int = 100,
    thread_id: str | None = None,
    exclude: Collection[str] = (),
) -> list[Case]:
    """The app's most recent ``limit`` traced turns (of one thread, with ``thread_id``) as
    evaluation cases, id ``trace-<trace id>``: the question as input, the answer given then as
    the reference (review it), the documents it cited as reference documents, the trace, app
    version and model as provenance. Turns without a question and ids in ``exclude`` are
    left out (what ``keel evals from-traces`` appends)."""
    cases: list[Case] = []
    for row in app.tracing.list(limit=limit, thread_id=thread_id):
        case_id = f"trace-{row['trace_id']}"
        if not row.get("question") or case_id in exclude:
            continue
        record = app.turn_record(row["trace_id"]) or {}
        cases.append(
            Case(
                id=case_id,
                input=row["question"],
                reference=row.get("answer") or None,
                reference_doc_ids=_cited_docs(app, row["trace_id"]),
                provenance={
                    "source": "trace",
                    "trace_id": row["trace_id"],
                    "app_version": record.get("app_version"),
                    "model": record.get("model"),
                },
            )
        )
    return cases


def cases_from_feedback(
    app: App, *, max_score: float | None = 0.5, exclude: Collection[str] = ()
) -> list[Case]:
    """Feedback scored at most ``max_score`` (0 bad .. 1 good; None: all of it) as evaluation
    cases, oldest first, with their provenance: the correction, when given, is the reference
    (the feedback-to-eval loop; what ``keel evals from-feedback`` appends). Feedback on a
    turn without a question and ids in ``exclude`` are left out."""
    from keel.ops.feedback_export import export_feedback

    return [
        Case(
            id=c["id"],
            input=c["input"],
            reference=c.get("reference"),
            reference_doc_ids=list(c.get("reference_doc_ids") or []),
            provenance=dict(c.get("provenance") or {}),
        )
        for c in export_feedback(app.engine, max_score=max_score, turns=app.turn_record)
        if c.get("input") and c["id"] not in exclude
    ]


__all__ = [
    "Case",
    "Dataset",
    "case_ids",
    "cases_from_feedback",
    "cases_from_traces",
    "dataset_version",
    "load_dataset",
    "retrieval_selftests",
    "save_dataset",
]
