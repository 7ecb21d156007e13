"""The releases a gateway serves beside the app on disk (``keel release deploy``).

Each release is built once (:meth:`keel.app.App.from_release`, sharing the disk app's
resources) and kept while it serves. A canary that cannot serve - it names a withdrawn tuned
model, or it does not build on this instance (a tool its code lacks, a model provider that is
not installed) - is not served: its share of threads goes to the stable release instead of
failing, and the gateway may roll it back (``on_unservable``). A stable release in either state
has nothing to fall back to, so its turns fail with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keel.api.problems import Problem

if TYPE_CHECKING:
    from keel.app import App
    from keel.ops.releases import ReleaseStore

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unservable:
    """Why a release may not serve: ``said`` is for anyone (``/readyz`` needs no key: no
    messages, names or paths), ``detail`` for the log, the release history and admin keys."""

    said: str
    detail: str


class ServedReleases:
    """The built releases of one gateway process, and why a canary may not serve.

    ``retry_s``: how long a canary that failed to build is left alone before it is built again
    (the failure may be this instance's and be mended). ``on_unservable(release_id, why)``
    hears of a canary found unable to serve, once while it is deployed."""

    def __init__(
        self,
        base: App,
        store: ReleaseStore,
        *,
        retry_s: Callable[[], float],
        on_unservable: Callable[[str, Unservable], None],
    ) -> None:
        self._base = base
        self._store = store
        self._retry_s = retry_s
        self._on_unservable = on_unservable
        self._apps: dict[str, App] = {}
        self._withdrawn: dict[str, str] = {}  # for good: a withdrawal is never undone
        self._broken: dict[str, tuple[Unservable, float]] = {}  # why, when (monotonic)
        self._reported: set[str] = set()  # unservable canaries reported while they serve
        self._guard = threading.Lock()

    def built(self) -> set[str]:
        """The releases built and kept in this process."""
        with self._guard:
            return set(self._apps)

    def keep_only(self, serving: Iterable[str | None]) -> None:
        """Let go of the releases no longer served (their database, stores and threads are
        the disk app's, so there is nothing to close)."""
        keep = set(serving)
        with self._guard:
            for rid in [r for r in self._apps if r not in keep]:
                del self._apps[rid]
            for rid in [r for r in self._broken if r not in keep]:
                del self._broken[rid]
            self._reported &= keep

    def app(self, release_id: str) -> App:
        """The app of a recorded release, built once and kept while it serves."""
        with self._guard:
            found = self._apps.get(release_id)
            if found is not None:
                return found
            release = self._store.get(release_id)
            if release is None:
                raise Problem(503, f"the deployed release {release_id} is not recorded")
            from keel.app import App as KeelApp

            built = KeelApp.from_release(release.id, release.content, base=self._base)
            built.hooks = self._base.hooks
            self._apps[release_id] = built
            return built

    def withdrawn(self, release_id: str) -> str | None:
        """Why a release may not serve because a tuned model it names was withdrawn (a
        person's data erased, perhaps by another process), or None. A withdrawal is for
        good, so the answer is kept; it is logged once, when found."""
        problem, found_now = self._find_withdrawn(release_id)
        if found_now:
            _log.warning("release %s may not serve: %s", release_id, problem)
        return problem

    def _find_withdrawn(self, release_id: str) -> tuple[str | None, bool]:
        """:meth:`withdrawn`'s answer, unlogged, and whether this call found it."""
        from keel.errors import ModelWithdrawn

        problem = self._withdrawn.get(release_id)
        if problem is not None:
            return problem, False
        try:
            problem = self.app(release_id).resources.tuned.problem()
        except ModelWithdrawn as exc:  # named a withdrawn model before it was built
            problem = str(exc)
        if problem is None:
            return None, False
        self._withdrawn[release_id] = problem
        return problem, True

    def canary_problem(self, release_id: str) -> Unservable | None:
        """Why the canary ``release_id`` may not serve (withdrawn, or it does not build: its
        app and its agent - model chain, tools, prompts - are built here), or None. The first
        time a canary is found unable to serve while it is deployed, ``on_unservable`` hears
        of it."""
        problem = self._problem(release_id)
        if problem is None:
            return None
        with self._guard:
            first = release_id not in self._reported
            self._reported.add(release_id)
        if first:
            _log.warning("canary release %s is not served: %s", release_id, problem.detail)
            self._on_unservable(release_id, problem)
        return problem

    def _problem(self, release_id: str) -> Unservable | None:
        withdrawn = self._withdrawn.get(release_id)
        if withdrawn is not None:
            return _withdrawn(withdrawn)
        with self._guard:
            broken = self._broken.get(release_id)
        if broken is not None and time.monotonic() - broken[1] < self._retry_s():
            return broken[0]
        try:
            found = self._find_withdrawn(release_id)[0]  # canary_problem logs it
            if found is None:
                self.app(release_id).agent  # noqa: B018 - builds it
        except Exception as exc:  # whatever stops it building stops it serving
            kind = type(exc).__name__
            problem = Unservable(f"does not build ({kind})", f"does not build: {kind}: {exc}")
            with self._guard:
                self._broken[release_id] = (problem, time.monotonic())
            return problem
        with self._guard:
            self._broken.pop(release_id, None)
        return None if found is None else _withdrawn(found)

    def canary(self, release_id: str) -> App | None:
        """The canary's app, or None while it may not serve (:meth:`canary_problem`)."""
        if self.canary_problem(release_id) is not None:
            return None
        return self.app(release_id)


def _withdrawn(detail: str) -> Unservable:
    return Unservable("a tuned model it names was withdrawn", detail)
