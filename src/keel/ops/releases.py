"""Releases: immutable, content-addressed records of everything that makes an app.

A release's content (config, prompts, tool signatures, model ids, index version, git
commit) is given by the caller; its id is ``rel-`` plus the first 12 hex digits of the
SHA-256 of the content's canonical JSON, so recording the same content twice returns the
same release. The deployment state of an app (a stable release, optionally a canary with a
traffic weight) lives next to the releases, and every switch is kept with its reason.

:func:`create_release` records an app as it is now, gated (when given a gate, e.g.
``keel.evals.SuiteGate``) against the run the stable release was gated with: what
``keel release create`` does.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.exc import IntegrityError

from keel.db import create_tables, metadata
from keel.errors import UsageError

ID_PREFIX = "rel-"

releases = Table(
    "keel_releases",
    metadata,
    Column("id", String(32), nullable=False),
    Column("app", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("content", Text, nullable=False),
    Column("deployable", Boolean, nullable=False),
    Column("gate", Text),
    Column("note", Text, nullable=False, default=""),
    PrimaryKeyConstraint("app", "id", name="pk_keel_releases"),
)
deployments = Table(
    "keel_deployments",
    metadata,
    Column("app", String(256), primary_key=True),
    Column("stable", String(32)),
    Column("canary", String(32)),
    Column("weight", Float, nullable=False, default=0.0),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
release_events = Table(
    "keel_release_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(256), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("action", String(32), nullable=False),
    Column("from_id", String(32)),
    Column("to_id", String(32)),
    Column("weight", Float, nullable=False),
    Column("reason", Text, nullable=False),
)
_TABLES = [releases, deployments, release_events]


def canonical_json(content: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the bytes a release id is the hash of."""
    try:
        return json.dumps(
            content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"release content is not plain JSON: {exc}") from exc


def release_id(content: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()
    return ID_PREFIX + digest[:12]


@dataclass(frozen=True)
class Release:
    id: str
    app: str
    created_at: datetime
    content: dict[str, Any]
    deployable: bool
    gate: dict[str, Any] | None
    note: str = ""


_clock_lock = threading.Lock()
_last_created = datetime.min.replace(tzinfo=UTC)


def _created_now() -> datetime:
    """Now, strictly after the last release created in this process, so ``list`` has an order."""
    global _last_created
    with _clock_lock:
        now = max(datetime.now(UTC), _last_created + timedelta(microseconds=1))
        _last_created = now
        return now


def _utc(value: datetime) -> datetime:
    # SQLite gives back naive datetimes; they were written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row_to_release(row: Any) -> Release:
    m = row._mapping
    return Release(
        id=m["id"],
        app=m["app"],
        created_at=_utc(m["created_at"]),
        content=json.loads(m["content"]),
        deployable=bool(m["deployable"]),
        gate=json.loads(m["gate"]) if m["gate"] is not None else None,
        note=m["note"] or "",
    )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ReleaseStore:
    """The releases and the deployment state of one app in the keel database."""

    def __init__(self, engine: Engine, app: str, *, actor: str = "cli") -> None:
        if not app:
            raise UsageError("a release store needs an app name")
        self.engine = engine
        self.app = app
        self.actor = actor  # who acts through this store, for the audit log
        create_tables(engine, metadata, _TABLES)

    def _audit(self, action: str, target: str | None, **details: Any) -> None:
        from keel.ops.audit import AuditLog

        AuditLog(self.engine, self.app).record(
            self.actor, f"release.{action}", target or "", details
        )

    # -- releases ---------------------------------------------------------------------------

    def create(
        self,
        content: Mapping[str, Any],
        *,
        note: str = "",
        gate: Mapping[str, Any] | None = None,
        deployable: bool | None = None,
    ) -> Release:
        """Record ``content`` as a release; the same content returns the existing release."""
        text = canonical_json(content)
        rid = release_id(content)
        existing = self._exact(rid)
        if existing is not None:
            return existing
        gate_dict = dict(gate) if gate is not None else None
        if deployable is None:
            deployable = True if gate_dict is None else bool(gate_dict.get("passed", False))
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    releases.insert().values(
                        id=rid,
                        app=self.app,
                        created_at=_created_now(),
                        content=text,
                        deployable=deployable,
                        gate=canonical_json(gate_dict) if gate_dict is not None else None,
                        note=note,
                    )
                )
        except IntegrityError:  # recorded meanwhile by another process
            pass
        else:
            self._audit("created", rid, deployable=deployable, note=note)
        created = self._exact(rid)
        if created is None:  # pragma: no cover - the insert or the other writer stored it
            raise UsageError(f"release {rid} could not be recorded")
        return created

    def _exact(self, rid: str) -> Release | None:
        query = select(releases).where(releases.c.app == self.app, releases.c.id == rid)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _row_to_release(row) if row is not None else None

    def get(self, release_id: str) -> Release | None:
        """The release with this id or unique id prefix (``rel-`` may be left out)."""
        prefix = release_id.strip()
        if not prefix:
            raise UsageError("an empty release id")
        if not prefix.startswith(ID_PREFIX):
            prefix = ID_PREFIX + prefix
        exact = self._exact(prefix)
        if exact is not None:
            return exact
        query = (
            select(releases)
            .where(
                releases.c.app == self.app,
                releases.c.id.like(_like_escape(prefix) + "%", escape="\\"),
            )
            .limit(2)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return None
        if len(rows) > 1:
            raise UsageError(f"release id prefix {release_id!r} is ambiguous")
        return _row_to_release(rows[0])

    def _require(self, release_id: str) -> Release:
        release = self.get(release_id)
        if release is None:
            raise UsageError(f"no release {release_id!r} for app {self.app!r}")
        return release

    def list(self) -> list[Release]:
        """Every release of the app, newest first."""
        query = (
            select(releases)
            .where(releases.c.app == self.app)
            .order_by(releases.c.created_at.desc(), releases.c.id.desc())
        )
        with self.engine.connect() as conn:
            return [_row_to_release(r) for r in conn.execute(query)]

    def diff(self, a: str, b: str) -> builtins.list[dict[str, Any]]:
        """Every differing leaf of two releases' content, by dotted path."""
        return diff_content(self._require(a).content, self._require(b).content)

    # -- deployment state -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(deployments).where(deployments.c.app == self.app)).first()
        if row is None:
            return {"stable": None, "canary": None, "weight": 0.0}
        m = row._mapping
        return {"stable": m["stable"], "canary": m["canary"], "weight": float(m["weight"])}

    def history(self) -> builtins.list[dict[str, Any]]:
        query = (
            select(release_events)
            .where(release_events.c.app == self.app)
            .order_by(release_events.c.id.desc())
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            {
                "at": _utc(r._mapping["at"]),
                "action": r._mapping["action"],
                "from": r._mapping["from_id"],
                "to": r._mapping["to_id"],
                "weight": float(r._mapping["weight"]),
                "reason": r._mapping["reason"],
            }
            for r in rows
        ]

    def set_stable(self, release_id: str, reason: str) -> None:
        """Serve ``release_id`` as the stable release (a canary of the same release is cleared)."""
        release = self._require(release_id)
        self._ensure_state_row()
        with self.engine.begin() as conn:
            current = self._lock_state(conn)
            canary, weight = current["canary"], current["weight"]
            if canary == release.id:
                canary, weight = None, 0.0
            self._write(conn, release.id, canary, weight)
            self._event(conn, "stable", current["stable"], release.id, weight, reason)
        self._audit("stable", release.id, previous=current["stable"], reason=reason)

    def set_canary(self, release_id: str | None, weight: float, reason: str) -> None:
        """Send ``weight`` of the traffic to ``release_id``; ``None`` clears the canary."""
        release: Release | None = None
        if release_id is not None:
            if not 0.0 < weight < 1.0:
                raise UsageError(f"a canary weight must be in (0, 1), not {weight}")
            release = self._require(release_id)
            if not release.deployable:
                raise UsageError(f"release {release.id} is not deployable (its eval gate failed)")
        self._ensure_state_row()
        with self.engine.begin() as conn:
            current = self._lock_state(conn)
            if release is None:
                if current["canary"] is None:
                    return
                self._write(conn, current["stable"], None, 0.0)
                self._event(conn, "clear_canary", current["canary"], None, 0.0, reason)
            else:
                if release.id == current["stable"]:
                    raise UsageError(f"release {release.id} is already the stable release")
                self._write(conn, current["stable"], release.id, weight)
                self._event(conn, "canary", current["canary"], release.id, weight, reason)
        if release is None:
            self._audit("clear_canary", current["canary"], reason=reason)
        else:
            self._audit("canary", release.id, weight=weight, reason=reason)

    def promote(self, reason: str) -> Release:
        """Make the canary the stable release and clear the canary."""
        self._ensure_state_row()
        with self.engine.begin() as conn:
            current = self._lock_state(conn)
            canary = current["canary"]
            if canary is None:
                raise UsageError(f"app {self.app!r} has no canary to promote")
            self._write(conn, canary, None, 0.0)
            self._event(conn, "promote", current["stable"], canary, current["weight"], reason)
        self._audit("promote", canary, previous=current["stable"], reason=reason)
        return self._require(canary)

    def rollback(self, reason: str, *, canary: str | None = None) -> None:
        """Clear the canary and keep the stable release. With ``canary``, only while that
        release is still the canary: a judgement about one release never rolls back another
        deployed since (by another process) - that is a :class:`UsageError`, as is no canary."""
        self._ensure_state_row()
        with self.engine.begin() as conn:
            current = self._lock_state(conn)
            if current["canary"] is None:
                raise UsageError(f"app {self.app!r} has no canary to roll back")
            if canary is not None and current["canary"] != canary:
                raise UsageError(
                    f"release {canary} is no longer the canary of app {self.app!r} "
                    f"({current['canary']} is)"
                )
            canary = current["canary"]
            self._write(conn, current["stable"], None, 0.0)
            self._event(conn, "rollback", canary, current["stable"], current["weight"], reason)
        self._audit("rollback", canary, stable=current["stable"], reason=reason)

    def _ensure_state_row(self) -> None:
        with self.engine.connect() as conn:
            exists = conn.execute(
                select(deployments.c.app).where(deployments.c.app == self.app)
            ).first()
        if exists is not None:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    deployments.insert().values(
                        app=self.app,
                        stable=None,
                        canary=None,
                        weight=0.0,
                        updated_at=datetime.now(UTC),
                    )
                )
        except IntegrityError:  # another writer created it meanwhile
            pass

    def _lock_state(self, conn: Connection) -> dict[str, Any]:
        """The state row, locked until the switch is written, so two processes switching at
        once (two gateway workers rolling back the same canary, a deploy beside a rollback)
        take turns and each reads what the other wrote. The transaction's first statement is
        a write that changes nothing: on SQLite it takes the database's write lock before
        anything is read (a plain ``SELECT`` would read without one, and ``FOR UPDATE`` is
        not SQLite's), on PostgreSQL it locks the row, as ``FOR UPDATE`` does."""
        conn.execute(
            deployments.update().where(deployments.c.app == self.app).values(app=deployments.c.app)
        )
        query = select(deployments).where(deployments.c.app == self.app).with_for_update()
        row = conn.execute(query).first()
        if row is None:  # pragma: no cover - _ensure_state_row ran first
            raise UsageError(f"no deployment state for app {self.app!r}")
        m = row._mapping
        return {"stable": m["stable"], "canary": m["canary"], "weight": float(m["weight"])}

    def _write(self, conn: Connection, stable: str | None, canary: str | None, w: float) -> None:
        conn.execute(
            deployments.update()
            .where(deployments.c.app == self.app)
            .values(stable=stable, canary=canary, weight=w, updated_at=datetime.now(UTC))
        )

    def _event(
        self,
        conn: Connection,
        action: str,
        from_id: str | None,
        to_id: str | None,
        weight: float,
        reason: str,
    ) -> None:
        conn.execute(
            release_events.insert().values(
                app=self.app,
                at=datetime.now(UTC),
                action=action,
                from_id=from_id,
                to_id=to_id,
                weight=weight,
                reason=reason,
            )
        )


# -- diff ------------------------------------------------------------------------------------

_MISSING: Any = object()


def _leaves(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _leaves(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            _leaves(item, f"{path}.{index}" if path else str(index), out)
    else:
        out[path] = value


def diff_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"path", "a", "b"}]`` for every differing leaf, sorted by path.

    Paths are dotted, list items by index. A leaf missing on one side is ``None`` there.
    Strings under ``prompts`` also carry a unified diff under ``"patch"``.
    """
    left: dict[str, Any] = {}
    right: dict[str, Any] = {}
    _leaves(dict(a), "", left)
    _leaves(dict(b), "", right)
    changes: list[dict[str, Any]] = []
    for path in sorted(set(left) | set(right)):
        va, vb = left.get(path, _MISSING), right.get(path, _MISSING)
        if va is not _MISSING and vb is not _MISSING and type(va) is type(vb) and va == vb:
            continue
        change: dict[str, Any] = {
            "path": path,
            "a": None if va is _MISSING else va,
            "b": None if vb is _MISSING else vb,
        }
        if path.startswith("prompts.") and (isinstance(va, str) or isinstance(vb, str)):
            old = va if isinstance(va, str) else ""
            new = vb if isinstance(vb, str) else ""
            change["patch"] = "".join(
                difflib.unified_diff(
                    old.splitlines(keepends=True),
                    new.splitlines(keepends=True),
                    fromfile=f"a/{path}",
                    tofile=f"b/{path}",
                )
            )
        changes.append(change)
    return changes


# -- traffic split ----------------------------------------------------------------------------


def route(thread_id: str, key_id: str | None, weight: float, *, salt: str) -> bool:
    """True when this thread (of this key) goes to the canary.

    A stable hash of ``(salt, key_id, thread_id)`` mapped to [0, 1) is compared with
    ``weight``: the same thread and key always get the same answer for a given salt (use the
    canary's release id, so a new canary re-draws), and the share of canary threads is
    ``weight``.
    """
    if weight <= 0.0:
        return False
    if weight >= 1.0:
        return True
    material = json.dumps([salt, key_id, thread_id], ensure_ascii=False)
    digest = hashlib.sha256(material.encode("utf-8")).digest()
    point = int.from_bytes(digest[:8], "big") / 2.0**64
    return point < weight


# -- creating a release from an app, gated --------------------------------------------------


class ReleasableApp(Protocol):
    """What :func:`create_release` needs of an app (``keel.App`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def engine(self) -> Engine: ...

    def release_content(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GateOutcome:
    """One gate run on an app: what a :class:`ReleaseGate` reports."""

    suite: str
    passed: bool
    reasons: list[str]
    dataset_version: str
    run: dict[str, Any]
    """The evaluation run as JSON: the next release is gated against it once this one is
    stable."""
    run_id: str | None = None
    """The id the run was recorded under in the app's eval runs, when it was recorded."""


class ReleaseGate(Protocol):
    """Evaluates ``app`` and gates it, against ``baseline_run`` (a run as JSON: the stable
    release's gate run) when given, else against the gate's own baseline."""

    def __call__(
        self, app: Any, *, baseline_run: Mapping[str, Any] | None = None
    ) -> GateOutcome: ...


@dataclass(frozen=True)
class ReleaseGateSummary:
    """A release's gate as it is stored with the release (``Release.gate``)."""

    suite: str
    passed: bool
    reasons: list[str]
    dataset_version: str
    baseline: str
    """``"release <id>"`` when gated against the stable release's run, else
    ``"suite baseline"``."""
    run: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "dataset_version": self.dataset_version,
            "baseline": self.baseline,
            "run": self.run,
        }


@dataclass(frozen=True)
class CreatedRelease:
    """What :func:`create_release` did: the release, and its gate when one ran."""

    release: Release
    gate: ReleaseGateSummary | None
    """The gate run now (None without a gate). When the same content was already released,
    ``release`` is that earlier record, with the gate it was created with."""
    baseline_release: str | None
    """The stable release whose gate run was the baseline, if any."""
    run_id: str | None = None
    """The recorded eval run of the gate, when the gate recorded it."""

    @property
    def deployable(self) -> bool:
        return self.release.deployable


def create_release(
    app: ReleasableApp,
    *,
    gate: ReleaseGate | None = None,
    note: str = "",
    store: ReleaseStore | None = None,
    llm_adapter: str | None = None,
) -> CreatedRelease:
    """Record ``app`` as it is now (config, prompts, tools, models, index version, commit) as
    an immutable, content-addressed release.

    ``llm_adapter`` names the language-model adapter (a LoRA or fine-tuned model made
    elsewhere, e.g. from ``keel feedback export --format sft|dpo``) that the app's model
    served when this release was evaluated; it is recorded as ``llm_adapter`` in the
    content (Keel does not load adapters: the model server does).

    With ``gate`` the app is evaluated first, against the stable release's own gate run when
    the stable release has one (a release must not be worse than what serves), else against
    the gate's baseline; the release is deployable only when the gate passes. The same
    content twice returns the release already recorded."""
    store = store if store is not None else ReleaseStore(app.engine, app.name)
    summary: ReleaseGateSummary | None = None
    baseline_release: str | None = None
    run_id: str | None = None
    if gate is not None:
        state = store.state()
        stable = store.get(state["stable"]) if state["stable"] else None
        stable_run = (stable.gate or {}).get("run") if stable is not None else None
        if stable is not None and stable_run:
            baseline_release = stable.id
        outcome = gate(app, baseline_run=stable_run or None)
        run_id = outcome.run_id
        summary = ReleaseGateSummary(
            suite=outcome.suite,
            passed=outcome.passed,
            reasons=list(outcome.reasons),
            dataset_version=outcome.dataset_version,
            baseline=f"release {baseline_release}" if baseline_release else "suite baseline",
            run=outcome.run,
        )
    content = app.release_content()
    if llm_adapter is not None:
        adapter = llm_adapter.strip()
        if not adapter or len(adapter) > 256 or any(not c.isprintable() for c in adapter):
            raise UsageError(f"llm adapter id {llm_adapter!r}: 1-256 printable characters")
        content["llm_adapter"] = adapter
    release = store.create(content, note=note, gate=summary.to_dict() if summary else None)
    return CreatedRelease(release, summary, baseline_release, run_id)
