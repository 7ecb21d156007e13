"""The agent side of an app, put together: guards and hooks, the agent and its compiled
graphs, the turn tracer, the semantic cache and the turn pipeline (:mod:`keel.agents.turn`).

It is built from the three parts an app is made of, :class:`~keel.definition.AppDefinition`
(what the app is), :class:`~keel.resources.Resources` (what it holds open) and
:class:`~keel.knowledge.Knowledge` (what it knows), and builds each piece on first use.
:class:`keel.app.App` is the facade over it; the few things a user may change on an App after
construction (its model, its hand-written hooks, the release it serves) are read through
callables, so they count until the first turn builds the agent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.agents.checkpoints import ThreadIndex
    from keel.agents.graph import Agent
    from keel.agents.hooks import Hooks
    from keel.agents.turn import TurnRunner
    from keel.config import KeelConfig
    from keel.definition import AppDefinition
    from keel.guardrails.runner import GuardRunner
    from keel.guardrails.scope import AppScope
    from keel.knowledge import Knowledge
    from keel.ops.cache import SemanticCache
    from keel.ops.cache_policy import CachePartition
    from keel.ops.cost import PriceTable
    from keel.ops.turn_trace import TurnTracer
    from keel.rag.types import Hit
    from keel.resources import Resources
    from keel.settings import Settings

__all__ = ["AppParts", "TurnAssembly"]


@dataclass(frozen=True)
class AppParts:
    """What an app is made of, as the assembly needs it."""

    config: KeelConfig
    settings: Settings
    definition: AppDefinition
    resources: Resources
    knowledge: Knowledge
    model: Callable[[], Any]
    """The model object the app was given (None: built from ``[model] id``)."""
    hooks: Callable[[], Hooks | None]
    """Hooks set on the app by hand; they run after the guards."""
    release_id: Callable[[], str | None]
    """The release the app serves, if any."""


class TurnAssembly:
    """Guards, agent, graphs, tracer, cache and turn pipeline of one app, built lazily."""

    def __init__(self, parts: AppParts) -> None:
        self.parts = parts
        self.config = parts.config

    @property
    def name(self) -> str:
        return self.config.app.name

    def index_version(self) -> str:
        return self.parts.knowledge.manifest(None).current_version()

    # -- guards and hooks ---------------------------------------------------------------------
    @cached_property
    def guards(self) -> GuardRunner:
        """The guards of ``[guards]`` in keel.toml, at the agent's hook points."""
        from keel.guardrails.runner import GuardRunner, Services

        toolset = self.parts.definition.toolset

        def external(name: str) -> bool:
            tool = toolset.get(name)
            return name == "http_get" or (tool is not None and tool.side_effects == "write")

        services = Services(
            embedder=lambda: self.parts.resources.embedder,
            support=lambda: self.parts.resources.support_embedder,
            system_prompt=lambda: self.parts.definition.prompts.system,
            canary=self.parts.definition.canary,
            scope=lambda: self.scope,
        )
        return GuardRunner(self.config.guards, services, external)

    @cached_property
    def scope(self) -> AppScope:
        """What the app is for, for the off-topic check (keel.guardrails.scope)."""
        from keel.guardrails.scope import AppScope

        knowledge = self.parts.knowledge

        def nearest(vector: Any) -> tuple[float, str] | None:
            hits = knowledge.store(None).query(vector, k=1)
            return (hits[0][1], hits[0][0].text) if hits else None

        system = self.parts.definition.authored_prompts.system
        return AppScope(self.config.app.description, system, nearest)

    def hooks(self) -> Hooks:
        """Guards first, then any hooks set on the app by hand."""
        from keel.agents.hooks import POINTS, Hooks

        g = self.guards
        guards = Hooks(
            input=[g.on_input] if g.rules["input"] else [],
            context=[g.on_context] if g.rules["context"] else [],
            tool_args=[g.on_tool_args] if g.rules["tool_args"] else [],
            tool_result=[g.on_tool_result] if g.rules["tool_result"] else [],
            output=[g.on_output] if g.rules["output"] else [],
            answer=[g.watch_answer] if g.rules["output"] else [],
        )
        extra = self.parts.hooks()
        if extra is None:
            return guards
        return Hooks(**{p: [*getattr(guards, p), *getattr(extra, p)] for p in (*POINTS, "answer")})

    # -- the agent and its graphs -------------------------------------------------------------
    @cached_property
    def agent(self) -> Agent:
        from keel.agents.graph import Agent, AgentConfig
        from keel.agents.models import ModelChain, build_model, model_name

        m = self.config.model
        resources = self.parts.resources

        def build(model_id: str) -> Any:
            return build_model(
                model_id,
                embedder=lambda: resources.embedder,
                settings=self.parts.settings,
                timeout_s=m.timeout_s,
                connect_timeout_s=m.connect_timeout_s,
                first_token_timeout_s=m.first_token_timeout_s,
            )

        given = self.parts.model()
        primary = (model_name(given), given) if given is not None else None
        models = [primary or (m.id, build(m.id)), *[(f, build(f)) for f in m.fallbacks]]
        a = self.config.agent
        chain = ModelChain(models, max_retries=m.max_retries, params=m.params() or None)
        self._check_prefetch(chain)
        return Agent(
            app_name=self.name,
            chain=chain,
            prompts=self.parts.definition.prompts,
            toolset=self.parts.definition.toolset,
            search=self._search_for_agent if a.retrieve else None,
            hooks=self.hooks(),
            tracer=resources.tracing.tracer if self.config.tracing.enabled else None,
            capture=self.capture,
            capture_prompts=self.config.tracing.capture == "full",
            cache=self.turns.cache_step if self.config.cache.enabled else None,
            config=AgentConfig(
                max_steps=a.max_steps,
                max_tool_calls=a.max_tool_calls,
                max_tool_errors=a.max_tool_errors,
                retrieve=a.retrieve,
            ),
        )

    def _check_prefetch(self, chain: Any) -> None:
        """Grounding's ``prefetch`` watches model calls that can stream and offer no tools
        (:mod:`keel.agents.watching`): an app whose calls are never such is refused, rather
        than the option silently doing nothing."""
        from keel.errors import ConfigError

        rule = next((r for r in self.guards.rules["output"] if r.validator == "grounding"), None)
        if rule is None or not getattr(rule.options, "prefetch", False):
            return
        where = "guards.output.grounding.prefetch"
        if not chain.streams_on_request:
            ids = ", ".join(mid for mid, _ in chain.models)
            raise ConfigError(
                f"{where}: needs openai:* models, whose replies can be streamed (here: {ids})"
            )
        if len(self.parts.definition.toolset):
            raise ConfigError(
                f"{where}: the app's tools are offered on every model call, and a call that "
                "offers tools is asked whole (llama-cpp-python cannot stream it): there would "
                "be nothing to watch"
            )

    def _search_for_agent(self, question: str) -> list[Hit]:
        from keel.rag.manifest import EMPTY_INDEX_VERSION

        if self.index_version() == EMPTY_INDEX_VERSION:
            return []  # no knowledge ingested: do not even load the embedding model
        return self.parts.knowledge.search(question)

    @cached_property
    def graph(self) -> Any:
        """The compiled LangGraph graph, with the app's checkpointer."""
        return self.agent.build(checkpointer=self.parts.resources.checkpointer)

    @cached_property
    def async_graph(self) -> Any:
        """The same graph for ``ainvoke``/``astream``, with the same checkpointer: a thread
        goes on from either."""
        return self.agent.build(checkpointer=self.parts.resources.checkpointer, run_async=True)

    @cached_property
    def ephemeral_graph(self) -> Any:
        """The agent graph without a checkpointer, for turns that are not kept."""
        return self.agent.build(checkpointer=None)

    @cached_property
    def threads(self) -> ThreadIndex:
        from keel.agents.checkpoints import ThreadIndex

        return ThreadIndex(self.parts.resources.engine, self.name)

    # -- what turns record --------------------------------------------------------------------
    @cached_property
    def prices(self) -> PriceTable:
        """Token prices per model: keel's defaults, overridden by ``[costs.prices]``."""
        from keel.ops.cost import PriceTable

        return PriceTable(self.config.costs.prices)

    @cached_property
    def git_commit(self) -> str | None:
        """The commit the app runs from: ``KEEL_GIT_COMMIT``, else ``git rev-parse HEAD``."""
        if self.parts.settings.git_commit:
            return self.parts.settings.git_commit
        import subprocess

        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=self.config.base_dir,
                capture_output=True,
                text=True,
                timeout=5,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() or None if out.returncode == 0 else None

    @cached_property
    def turn_tracer(self) -> TurnTracer:
        from keel.guardrails.redaction import redact_text
        from keel.ops.turn_trace import AppIdentity, TurnTracer

        definition = self.parts.definition
        p = definition.prompts
        identity = AppIdentity(
            name=self.name,
            model_id=lambda: self.agent.chain.models[0][0],
            index_version=self.index_version,
            version_for=definition.version_for,
            prompt_versions=lambda: {
                "system_version": p.system_version,
                "examples_version": p.examples_version,
            },
            release_id=self.parts.release_id(),
            git_commit=lambda: self.git_commit,
        )
        tracer = self.parts.resources.tracing.tracer
        return TurnTracer(tracer, identity, self.config.tracing.capture, redact_text)

    def capture(self, text: str) -> str | None:
        """What of a text goes on a span (``[tracing] capture``)."""
        return self.turn_tracer.capture(text)

    # -- the cache and the turn pipeline ------------------------------------------------------
    @cached_property
    def cache(self) -> SemanticCache:
        """The semantic cache (``[cache]``); consulted by turns only when enabled."""
        from keel.ops.cache import SemanticCache

        c = self.config.cache
        return SemanticCache(
            self.parts.resources.engine,
            self.name,
            threshold=c.threshold,
            ttl_s=c.ttl_s,
            max_entries=c.max_entries,
        )

    def cache_partition(
        self,
        owner: str | None,
        scopes: Sequence[str] | None,
        readable: frozenset[str] | None = None,
    ) -> CachePartition:
        from keel.ops.cache import partition_key
        from keel.ops.cache_policy import CachePartition

        index_version = self.index_version()
        release = self.parts.release_id() or self.parts.definition.version_for(index_version)
        key = partition_key(self.name, release, index_version, owner, scopes, readable)
        return CachePartition(key, release, index_version, owner)

    @cached_property
    def turns(self) -> TurnRunner:
        """The turn pipeline every surface runs turns through (:mod:`keel.agents.turn`)."""
        from keel.agents.turn import TurnParts, TurnRunner
        from keel.ops.cache_policy import TurnCache

        resources, knowledge = self.parts.resources, self.parts.knowledge
        cache = (
            TurnCache(lambda: self.cache, lambda: resources.embedder, self.cache_partition)
            if self.config.cache.enabled
            else None
        )
        a = self.config.agent
        toolset = self.parts.definition.toolset
        return TurnRunner(
            TurnParts(
                graph=lambda: self.graph,
                ephemeral_graph=lambda: self.ephemeral_graph,
                checkpointer=lambda: resources.checkpointer,
                threads=lambda: self.threads,
                guards=lambda: self.guards,
                tracer=lambda: self.turn_tracer,
                support_embedder=lambda: resources.support_embedder,
                doc_hashes=lambda ids: knowledge.manifest(None).hashes(ids),
                prices=lambda: self.prices,
                app_name=self.name,
                max_steps=a.max_steps,
                citation_threshold=a.citation_threshold,
                writes=lambda: any(t.side_effects == "write" for t in toolset),
                cache=cache,
                release_id=self.parts.release_id(),
                async_graph=lambda: self.async_graph,
                check_models=resources.check_tuned,
            )
        )

    def turn_record(self, trace_id: str) -> dict[str, Any] | None:
        """What a traced turn asked, answered and retrieved (for feedback and evaluation):
        :meth:`keel.ops.tracing.Tracing.turn` with its chunks read back from the store."""
        tracing = self.parts.resources.tracing
        tracing.flush()
        turn = tracing.turn(trace_id)
        if turn is None:
            return None
        ids = list(turn.chunk_ids)
        chunks = self.parts.knowledge.store(None).get(ids) if ids else []
        hits = [
            {
                "chunk_id": c.id,
                "doc_id": c.doc_id,
                "text": c.text,
                "source": c.source,
                "title": c.title,
                "headings": list(c.headings),
            }
            for c in chunks
        ]
        return {
            "question": turn.question,
            "answer": turn.answer,
            "hits": hits,
            "app_version": turn.app_version,
            "index_version": turn.index_version,
            "model": turn.model,
            "prompt_versions": turn.prompt_versions,
            "git_commit": turn.git_commit,
        }
