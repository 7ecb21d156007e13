"""Tuned models as artefacts: content-addressed folders under the app's data directory.

``<data_dir>/tuned/<kind>/<id>/`` holds the model files and ``keel-artefact.json``, the
manifest: the kind (``embeddings`` or ``reranker``), the base model, the hash of the training
data, the hyper-parameters, the gate's figures and verdict, and when it was made. The id is
the SHA-256 of the model's files (the first 16 hex digits): the same weights are the same
artefact, whatever made them. An app uses one by naming it in keel.toml
(``[rag.embeddings] model = "tuned:<id>"``); a release records that config, so rolling back a
release goes back to the model it named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from keel.errors import ConfigError, ModelWithdrawn, UsageError

__all__ = ["PREFIX", "Artefact", "ArtefactStore", "GateFigures", "InUse", "Kind"]

Kind = Literal["embeddings", "reranker"]
KINDS: tuple[Kind, ...] = ("embeddings", "reranker")
PREFIX = "tuned:"
MANIFEST = "keel-artefact.json"


@dataclass(frozen=True)
class GateFigures:
    """What the gate measured: the tuned model against the current one, per query paired."""

    metric: str
    on: str  # what the queries were: "suite <name> (held out)" or "held-out synthetic ..."
    queries: int
    before: float
    after: float
    ci_low: float
    ci_high: float
    passed: bool


@dataclass(frozen=True)
class Artefact:
    id: str
    kind: Kind
    base_model: str
    training_data_hash: str
    pairs: Mapping[str, int]  # training pairs per source
    params: Mapping[str, Any]
    train_seconds: float
    created_at: str
    gate: GateFigures | None = None
    # the traces whose rated turns were offered as training pairs (``--from feedback``):
    # erasing a person's data withdraws the artefacts trained on it (ArtefactStore.withdraw)
    feedback_traces: tuple[str, ...] = ()
    withdrawn: str | None = None  # why it may no longer be used, once withdrawn
    path: Path = field(default=Path(), compare=False)

    @property
    def deployable(self) -> bool:
        return self.gate is not None and self.gate.passed and self.withdrawn is None

    @property
    def ref(self) -> str:
        """How keel.toml names it."""
        return f"{PREFIX}{self.id}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        out["deployable"] = self.deployable
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path) -> Artefact:
        gate = data.get("gate")
        return cls(
            id=str(data["id"]),
            kind=data["kind"],
            base_model=str(data["base_model"]),
            training_data_hash=str(data["training_data_hash"]),
            pairs=dict(data.get("pairs") or {}),
            params=dict(data.get("params") or {}),
            train_seconds=float(data.get("train_seconds") or 0.0),
            created_at=str(data["created_at"]),
            gate=GateFigures(**gate) if isinstance(gate, Mapping) else None,
            feedback_traces=tuple(str(t) for t in data.get("feedback_traces") or ()),
            withdrawn=str(data["withdrawn"]) if data.get("withdrawn") else None,
            path=path,
        )


def _replace_manifest(folder: Path, text: str) -> None:
    """Write an artefact's manifest in one step (a server may be reading it)."""
    staged = folder / f".{MANIFEST}.{os.getpid()}.{time.time_ns()}"
    staged.write_text(text)
    os.replace(staged, folder / MANIFEST)


def _files_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class ArtefactStore:
    """The tuned artefacts of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "tuned"

    def add(self, kind: Kind, model_dir: Path, **manifest: Any) -> Artefact:
        """Move a trained model folder in as an artefact (the same files: the one already
        there, with this manifest)."""
        artefact_id = _files_digest(model_dir)
        target = self.root / kind / artefact_id
        artefact = Artefact(
            id=artefact_id,
            kind=kind,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            path=target,
            **manifest,
        )
        text = json.dumps(artefact.to_dict(), indent=2) + "\n"
        (model_dir / MANIFEST).write_text(text)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(model_dir, target)  # atomic; fails when the folder is there already
        except OSError:
            if not (target / MANIFEST).is_file():
                raise
            # The same weights are there already (another run, perhaps another process, made
            # them; a server may be loading them): their files stay, the manifest is replaced
            # in one step, and this run's copy goes.
            _replace_manifest(target, text)
            shutil.rmtree(model_dir, ignore_errors=True)
        return artefact

    def withdraw(self, trace_ids: Collection[str], reason: str) -> list[Artefact]:
        """Withdraw every artefact trained on feedback of one of ``trace_ids`` (a person's
        data being erased): its weights, learnt from that data, are deleted; its manifest
        stays as the record, saying why; a config naming it is refused, ``allow_ungated`` or
        not. Returns those withdrawn now."""
        wanted = set(trace_ids)
        done = []
        for artefact in self.list() if wanted else []:
            if artefact.withdrawn is None and wanted.intersection(artefact.feedback_traces):
                withdrawn = replace(artefact, withdrawn=reason)
                _replace_manifest(artefact.path, json.dumps(withdrawn.to_dict(), indent=2) + "\n")
                for path in artefact.path.iterdir():
                    if path.name != MANIFEST:
                        if path.is_dir():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
                done.append(withdrawn)
        return done

    def list(self, kind: Kind | None = None) -> list[Artefact]:
        """Every artefact, newest first."""
        found = []
        for k in [kind] if kind else list(KINDS):
            folder = self.root / k
            if folder.is_dir():
                for path in folder.iterdir():
                    if (path / MANIFEST).is_file():
                        found.append(self._read(path))
        return sorted(found, key=lambda a: (a.created_at, a.id), reverse=True)

    def _read(self, path: Path) -> Artefact:
        try:
            return Artefact.from_dict(json.loads((path / MANIFEST).read_text()), path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"artefact {path.name}: unreadable manifest ({exc})") from exc

    def get(self, ref: str, kind: Kind | None = None) -> Artefact:
        """An artefact by id, id prefix or ``tuned:<id>``; :class:`UsageError` if there is
        none or several."""
        wanted = ref.removeprefix(PREFIX).strip()
        if not wanted or not all(c in "0123456789abcdef" for c in wanted):
            raise UsageError(f"{ref!r} is not an artefact id (hex digits, or tuned:<id>)")
        matches = [a for a in self.list(kind) if a.id.startswith(wanted)]
        if not matches:
            raise UsageError(f"no tuned {kind or 'artefact'} {wanted!r} under {self.root}")
        if len({a.id for a in matches}) > 1:
            raise UsageError(f"artefact id {wanted!r} is ambiguous: give more digits")
        return matches[0]

    def resolve(self, ref: str, kind: Kind, *, allow_ungated: bool) -> Artefact:
        """The artefact a config names, refused (:class:`ConfigError`) when it is missing or
        did not pass its gate and ``allow_ungated`` is off."""
        try:
            artefact = self.get(ref, kind)
        except UsageError as exc:
            raise ConfigError(str(exc)) from None
        if artefact.withdrawn is not None:
            raise ModelWithdrawn(
                f"tuned {kind} {artefact.id} was withdrawn ({artefact.withdrawn}); train a new "
                f"one with keel tune {kind}"
            )
        if not artefact.deployable and not allow_ungated:
            raise ConfigError(
                f"tuned {kind} {artefact.id} did not pass its gate (keel tune show "
                f"{artefact.id}); set allow_ungated = true in its config section to use it anyway"
            )
        return artefact


class InUse:
    """The artefacts one process has loaded (an app's embedder, its reranker), watched for
    withdrawal. Erasing a person's data withdraws the artefacts trained on it, often from
    another process (``keel privacy erase``); a process that loaded one before must stop
    using it rather than answer from weights learnt from erased data until it restarts. The
    manifest on disk is the state every process shares: :meth:`problem` stats each loaded
    artefact's manifest (one ``stat``) and reads it again only when it changed.

    A release served beside an app watches its own artefacts and, through ``parent``, the
    app's it shares (its embedder): a model only a canary loaded stops that canary, not the
    app's other releases."""

    def __init__(self, parent: InUse | None = None) -> None:
        self.parent = parent
        self._lock = threading.Lock()
        self._loaded: dict[Path, Artefact] = {}
        self._seen: dict[Path, tuple[int, int, int] | None] = {}
        self._problems: dict[Path, str | None] = {}

    def add(self, artefact: Artefact) -> None:
        with self._lock:
            self._loaded[artefact.path] = artefact

    def problem(self) -> str | None:
        """Why a loaded artefact (this watch's or its parent's) may no longer be used (None:
        every one may)."""
        own = self._problem()
        if own is None and self.parent is not None:
            return self.parent.problem()
        return own

    def _problem(self) -> str | None:
        if not self._loaded:
            return None
        with self._lock:
            for path, artefact in self._loaded.items():
                manifest = path / MANIFEST
                try:
                    st = manifest.stat()
                    seen: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
                except OSError:
                    seen = None
                if path not in self._problems or self._seen.get(path) != seen:
                    self._seen[path] = seen
                    self._problems[path] = _withdrawal(artefact, manifest, seen is not None)
                if self._problems[path] is not None:
                    return self._problems[path]
        return None


def _withdrawal(artefact: Artefact, manifest: Path, exists: bool) -> str | None:
    what = f"tuned {artefact.kind} {artefact.id}, which this process loaded,"
    advice = f"restart with a config that names another model (keel tune {artefact.kind})"
    if not exists:
        return f"{what} is gone from {artefact.path}; {advice}"
    try:
        reason = json.loads(manifest.read_text()).get("withdrawn")
    except (OSError, ValueError) as exc:
        return f"{what} has an unreadable manifest ({exc}); {advice}"
    return f"{what} was withdrawn ({reason}); {advice}" if reason else None
