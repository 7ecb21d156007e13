"""The gateway's shared state and the request plumbing every route uses."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Request

from keel.api.keys import ApiKey, KeyStore
from keel.api.limits import KeyLimits
from keel.api.problems import Problem
from keel.errors import ModelError, StoreError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from keel.api.served import Unservable
    from keel.app import App
    from keel.ops.jobs import JobRecord
    from keel.worker import IngestWork


def _seconds_to_midnight() -> int:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()))


def _outcome(answer: dict[str, Any]) -> str:
    stop = answer.get("stop_reason")
    if stop == "error":
        return "error"
    if stop == "guardrail":
        return "guard_tripped"
    return "ok"


_log = logging.getLogger(__name__)


class Gateway:
    """What the routes share: the Keel app, keys, limits, thread locks, ingest jobs."""

    def __init__(self, app: App, registry: CollectorRegistry) -> None:
        self.app = app
        self.keys = KeyStore(app.engine)
        lim = app.config.limits
        self.limits = KeyLimits(
            requests_per_minute=lim.requests_per_minute,
            tokens_per_day=lim.tokens_per_day,
            redis_url=app.settings.redis_url,
        )
        self.registry = registry
        from keel.ops.cost import UsageLedger
        from keel.ops.metrics import Metrics

        self.metrics = Metrics(registry)
        self.ledger = UsageLedger(app.engine)
        from keel.ops.locks import leases_for

        # one turn at a time per thread across every worker and instance (Redis when
        # configured, else the keel database): a lease, not a per-process lock
        self.leases = leases_for(app.engine, app.settings.redis_url)
        from keel.worker import JobQueue

        # jobs in the keel database (any instance answers GET /v1/ingest/{job}), run by the
        # workers of the app's task queue (keel.worker)
        self.queue = JobQueue(app)
        from keel.ops.releases import ReleaseStore

        self.releases = ReleaseStore(app.engine, app.name, actor="gateway")
        from keel.ops.audit import AuditLog

        self.audit = AuditLog(app.engine, app.name)
        from keel.api.served import ServedReleases

        self.served = ServedReleases(
            app,
            self.releases,
            retry_s=lambda: app.config.deploy.check_interval_s,
            on_unservable=self._canary_unservable,
        )
        self._deployment: dict[str, Any] = {"stable": None, "canary": None, "weight": 0.0}
        self._deployment_read = -1e18
        self._check_lock = threading.Lock()
        self._last_prune = -1e18
        self._last_check = time.monotonic()
        self.last_verdict: dict[str, Any] | None = None
        from keel.api.storage import StorageCheck

        self.storage = StorageCheck(app)

    # -- auth ----------------------------------------------------------------------------------
    def authenticate(self, request: Request, scope: str) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "missing API key: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": 'Bearer realm="keel"'},
            )
        return self.admit(request, token, scope)

    def admit(self, request: Request, token: str, scope: str) -> ApiKey:
        """The key for a presented token, checked as every request is: valid, holding
        ``scope``, within its cost budget and rate limit (the web console's cookie too)."""
        gone = self.storage.data_dir_problem()
        if gone is not None:
            raise Problem(503, gone, type="store-unavailable")
        key = self.keys.verify(token)
        if key is None:
            raise Problem(
                401,
                "invalid or revoked API key",
                headers={"WWW-Authenticate": 'Bearer realm="keel", error="invalid_token"'},
            )
        withdrawn = self.app.resources.tuned.problem()
        if withdrawn is not None:  # a tuned model this server loaded was withdrawn since
            raise Problem(503, withdrawn, type="model-withdrawn")  # said to keys only
        if not key.allows(scope):
            try:
                # the route, never the raw path (it may name a person or a thread)
                route = getattr(request.scope.get("route"), "path", None) or request.url.path
                self.audit.record(key.id, "access.denied", route, {"scope": scope})
            except StoreError:  # the request is refused all the same; the loss is logged
                _log.error("access.denied by %s on %s not audited", key.id, request.url.path,
                           exc_info=True)  # fmt: skip
            raise Problem(403, f"this key lacks the {scope!r} scope", scope=scope)
        budget = self.app.config.costs.daily_budget_usd_per_key
        if budget is not None and self.ledger.over_budget(key.id, budget):
            raise Problem(
                429,
                f"the key's daily cost budget (${budget:.2f}) is spent",
                type="cost-budget",
                headers={"Retry-After": str(_seconds_to_midnight())},
                retry_after=_seconds_to_midnight(),
            )
        refusal = self.limits.admit(key.id)
        if refusal is not None:
            raise Problem(
                429,
                refusal.reason,
                headers={"Retry-After": str(refusal.retry_after)},
                retry_after=refusal.retry_after,
            )
        request.state.key_id = key.id
        return key

    # -- releases -------------------------------------------------------------------------------
    def deployment(self) -> dict[str, Any]:
        """Which releases serve (``keel release deploy``), re-read every ``refresh_s``."""
        now = time.monotonic()
        if now - self._deployment_read >= self.app.config.deploy.refresh_s:
            self._deployment = self.releases.state()
            self._deployment_read = now
            self.metrics.deployment(self._deployment)
            self.served.keep_only((self._deployment["stable"], self._deployment["canary"]))
        return self._deployment

    def release_app(self, release_id: str) -> App:
        """The app of a recorded release, built once and kept while it serves."""
        return self.served.app(release_id)

    def _canary_unservable(self, release_id: str, why: Unservable) -> None:
        """A canary that cannot serve (withdrawn, or it does not build) gets no observations,
        so it would wait for ever: with ``auto_rollback`` it is rolled back at once, for every
        instance (the deployment is shared), with the reason. Meanwhile stable serves its
        share (:meth:`app_for`)."""
        if not self.app.config.deploy.auto_rollback:
            return
        from keel.errors import UsageError

        try:
            self.releases.rollback(f"automatic: it cannot serve: {why.detail}", canary=release_id)
        except UsageError:  # rolled back (or replaced) meanwhile, perhaps by another instance
            return
        self.metrics.rollback(release_id)
        self._deployment_read = -1e18  # serve the new state at once

    def release_of(self, trace_id: str) -> str | None:
        """The release that served a traced turn (None: the app on disk, or unknown)."""
        from sqlalchemy import select

        from keel.ops.tracing import traces_table

        self.app.tracing.flush()
        query = select(traces_table.c.release_id).where(traces_table.c.trace_id == trace_id)
        with self.app.engine.connect() as conn:
            found = conn.execute(query).scalar_one_or_none()
        return str(found) if found else None

    def app_for(self, thread_id: str, key_id: str | None) -> App:
        """The app that serves this thread of this key: the canary for a sticky share of
        threads (``route``: the same thread and key always land on the same side), the stable
        release otherwise, and the app on disk while no release is deployed."""
        from keel.ops.releases import route

        state = self.deployment()
        canary, stable = state["canary"], state["stable"]
        if canary and route(thread_id, key_id, state["weight"], salt=canary):
            app = self.served.canary(canary)
            if app is not None:
                return app
        if stable:
            return self._stable_app(stable)
        return self.app

    def _stable_app(self, release_id: str) -> App:
        """The stable release's app. One that does not build on this instance is the
        deployment's fault, not the caller's: 503 ``release-unavailable`` (the reason goes to
        the log and ``/readyz``), where its error would have answered 400 with its message."""
        from keel.errors import ModelWithdrawn

        try:
            return self.release_app(release_id)
        except (Problem, ModelWithdrawn):
            raise
        except Exception as exc:
            _log.error("the stable release %s does not build", release_id, exc_info=True)
            raise Problem(
                503,
                f"the stable release {release_id} does not build on this instance",
                type="release-unavailable",
            ) from exc

    def maybe_prune(self) -> None:
        """Apply ``[retention]`` every ``retention.interval_s`` in a background thread, under a
        lease so one instance at a time prunes (the deletes are idempotent anyway)."""
        r = self.app.config.retention
        periods = (r.traces_days, r.feedback_days, r.usage_days, r.cache_days, r.threads_days)
        if all(p is None for p in periods):
            return
        if time.monotonic() - self._last_prune < r.interval_s:
            return
        self._last_prune = time.monotonic()
        threading.Thread(target=self.prune_now, name="keel retention", daemon=True).start()

    def prune_now(self) -> dict[str, int | None] | None:
        """Prune now unless another instance is (then None)."""
        lease = self.leases.try_acquire(f"{self.app.name}:retention")
        if lease is None:
            return None
        with lease:
            try:
                return self.app.prune()
            except Exception:  # retention must never take the gateway down
                _log.warning("retention pruning failed", exc_info=True)
                return None

    def maybe_check_canary(self) -> None:
        """Judge the canary every ``check_interval_s`` (one check at a time, never blocking a
        request for another's check) and roll it back when it is significantly worse."""
        deploy = self.app.config.deploy
        if not deploy.auto_rollback:
            return
        if time.monotonic() - self._last_check < deploy.check_interval_s:
            return
        if not self._check_lock.acquire(blocking=False):
            return
        try:
            self._last_check = time.monotonic()
            self.check_canary()
        finally:
            self._check_lock.release()

    def check_canary(self) -> dict[str, Any] | None:
        """Judge the canary now; roll it back when it is worse. The verdict, or None."""
        from keel.ops.canary import CanaryPolicy, canary_verdict

        deploy = self.app.config.deploy
        self.app.tracing.flush()  # the latest turns count
        verdict = canary_verdict(
            self.releases,
            CanaryPolicy(min_sample=deploy.min_sample, alpha=deploy.alpha, margin=deploy.margin),
            rollback=deploy.auto_rollback,
        )
        if verdict is None:
            return None
        self.last_verdict = verdict.to_dict()
        if verdict.rollback:
            self.metrics.rollback(verdict.canary)
            self._deployment_read = -1e18  # serve the new state at once
        return self.last_verdict

    @staticmethod
    def tool_scopes(key: ApiKey) -> list[str] | None:
        """The scopes handed to the tool policy: an admin key holds every scope."""
        return None if key.is_admin else sorted(key.scopes)

    # -- threads -------------------------------------------------------------------------------
    def stored_thread(self, key: ApiKey, thread_id: str) -> str:
        """The stored id of the thread ``key`` names ``thread_id``: thread ids are scoped to
        the key (:func:`keel.agents.checkpoints.scoped_thread_id`)."""
        return self.app.threads.resolve(thread_id, key.id)

    @contextmanager
    def thread_lock(self, thread_id: str) -> Iterator[None]:
        """One request at a time per thread, whichever process or instance serves it; a
        second concurrent one gets 409. The lease expires on its own if this process dies."""
        lease = self.leases.try_acquire(f"{self.app.name}:thread:{thread_id}")
        if lease is None:
            raise Problem(409, f"thread {thread_id!r} is busy with another request")
        try:
            yield
        finally:
            lease.release()

    def account(
        self,
        key: ApiKey,
        answer: dict[str, Any],
        seconds: float,
        *,
        end_user: str | None = None,
    ) -> None:
        """After a turn: the key's (and the end user's) tokens and cost, and the metrics."""
        usage = answer.get("usage", {})
        self.limits.spend_tokens(key.id, int(usage.get("total_tokens", 0)))
        self.ledger.record(key.id, usage, answer.get("cost_usd"), end_user=end_user)
        self.metrics.answer(answer, seconds, retrieved=self.app.config.agent.retrieve)
        self.metrics.release_request(answer.get("release_id"), _outcome(answer))
        self.maybe_check_canary()
        self.maybe_prune()

    def submit(self, work: IngestWork) -> JobRecord:
        """Queue an ingestion job; without separate workers (``KEEL_EMBEDDED_WORKER``, the
        default) this process runs one."""
        job = self.queue.submit(work)
        if self.app.settings.embedded_worker:
            self.queue.run_embedded()
        return job

    def close(self) -> None:
        """Stop this process's worker (a job it runs finishes first)."""
        self.queue.stop_embedded()

    @contextmanager
    def serving(self, app: App) -> Iterator[None]:
        """Around a turn: a failure counts against the release that served it."""
        try:
            yield
        except Exception as exc:
            self.failed(app, exc)
            raise

    def failed(self, app: App, exc: BaseException) -> None:
        """A turn failed (before or during its stream): it counts against the release that
        served it, and a model failure's calls count as failed model calls."""
        if isinstance(exc, ModelError):
            self.metrics.model_errors_of(exc.attempts)
        self.metrics.release_request(app.release_id, "error")
        self.maybe_check_canary()
