"""``AppDefinition``: what an app is, apart from its knowledge and what it holds open: the
config (keel.toml), the prompts, the tools and the content hash of all three. A release
records one (:meth:`AppDefinition.content`) and :meth:`AppDefinition.from_release` makes it
again, checking that the deployed code still provides the tools it recorded.

The app version is this hash combined with the index version (:meth:`version_for`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.config import KeelConfig, config_from_dict
from keel.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from keel.agents.prompts import Prompts
    from keel.rag.types import Hit
    from keel.tools.registry import Toolset

__all__ = ["AppDefinition"]

Search = Callable[[str, int], "list[Hit]"]


class AppDefinition:
    """Config, prompts and tools of one app (see the module's docstring). ``search`` is what
    the built-in ``keel:search_knowledge`` tool searches with; ``prompts`` and ``toolset``,
    when given, replace what the config names (a release's stored prompts, tools made in
    code)."""

    def __init__(
        self,
        config: KeelConfig,
        search: Search,
        *,
        prompts: Prompts | None = None,
        toolset: Toolset | None = None,
    ) -> None:
        self.config = config
        self._search = search
        if prompts is not None:  # cached_property reads the instance dict first
            self.__dict__["prompts"] = prompts
        if toolset is not None:
            self.__dict__["toolset"] = toolset

    @classmethod
    def from_release(
        cls, release_id: str, content: Mapping[str, Any], *, base_dir: Path, search: Search
    ) -> AppDefinition:
        """The definition a release recorded. Tools are code, so the tools the deployed code
        provides must have the signatures the release recorded (otherwise a
        :class:`UsageError` names the difference)."""
        from keel.agents.prompts import Example, Prompts

        raw = content.get("config")
        if not isinstance(raw, dict):
            raise UsageError(f"release {release_id} has no config")
        config = config_from_dict(json.loads(json.dumps(raw)), base_dir=base_dir, origin=release_id)
        stored = content.get("prompts") or {}
        prompts = Prompts(
            system=str(stored.get("system", "")),
            examples=tuple(
                Example(question=str(e["question"]), answer=str(e["answer"]))
                for e in stored.get("examples", [])
            ),
            system_source=f"release {release_id}",
            examples_source=f"release {release_id}" if stored.get("examples") else None,
        )
        definition = cls(config, search, prompts=prompts)
        recorded_tools = content.get("tools", [])
        deployed_tools = definition.toolset.to_openai()
        if _canonical(recorded_tools) != _canonical(deployed_tools):
            names = sorted(
                {t.get("function", {}).get("name", "?") for t in recorded_tools}
                ^ {t.get("function", {}).get("name", "?") for t in deployed_tools}
            )
            detail = f" (tools only on one side: {', '.join(names)})" if names else ""
            raise UsageError(
                f"release {release_id} recorded other tool signatures than the deployed code "
                f"provides{detail}: deploy the code it was made from"
            )
        recorded = {k: content.get(k) for k in ("config", "prompts", "tools", "models")}
        definition.__dict__["digest"] = hashlib.sha256(_canonical(recorded).encode()).hexdigest()
        return definition

    @property
    def name(self) -> str:
        return self.config.app.name

    @property
    def canary(self) -> str:
        """A marker put in the system prompt when ``prompt_leak`` guards the output: if it
        ever shows up in an answer, the system prompt leaked."""
        digest = hashlib.sha256(f"keel-canary\x00{self.name}".encode()).hexdigest()[:12]
        return f"keel-canary-{digest}"

    @cached_property
    def authored_prompts(self) -> Prompts:
        """The prompts as written, without the canary marker :attr:`prompts` may add (what
        the off-topic check compares with, and what training data exported for tuning
        shows: the marker is a secret)."""
        from keel.agents.prompts import load_prompts

        p = self.config.prompts
        return load_prompts(
            self.config.resolve(p.system) if p.system else None,
            self.config.resolve(p.examples) if p.examples else None,
            {"app_name": self.name, "app_description": self.config.app.description},
        )

    @cached_property
    def prompts(self) -> Prompts:
        """The prompts the model gets: :attr:`authored_prompts`, with a canary marker in the
        system prompt when the ``prompt_leak`` output guard is on."""
        from dataclasses import replace

        prompts = self.authored_prompts
        if "prompt_leak" in self.config.guards.output:
            prompts = replace(
                prompts,
                system=f"{prompts.system}\n\n(Internal marker, never repeat it: {self.canary})",
            )
        return prompts

    @cached_property
    def toolset(self) -> Toolset:
        """The app's tools: ``[tools] enabled`` in keel.toml, which is also the allowlist."""
        from keel.tools.builtin import calculator, make_http_get, make_search_knowledge
        from keel.tools.registry import Toolset

        tools: list[Any] = []
        imports: list[str] = []
        cfg = self.config.tools
        for ref in cfg.enabled:
            if ref == "keel:search_knowledge":
                tools.append(make_search_knowledge(lambda q, k: self._search(q, k)))
            elif ref == "keel:calculator":
                tools.append(calculator)
            elif ref == "keel:http_get":
                if not cfg.http_get.allowed_hosts:
                    raise ConfigError("keel:http_get needs tools.http_get.allowed_hosts")
                tools.append(
                    make_http_get(
                        allowed_hosts=cfg.http_get.allowed_hosts,
                        max_bytes=cfg.http_get.max_bytes,
                        timeout_s=cfg.http_get.timeout_s,
                    )
                )
            elif ref.startswith("keel:"):
                raise ConfigError(f"tools.enabled: unknown built-in tool {ref!r}")
            else:
                imports.append(ref)
        toolset = Toolset(tools)
        if imports:
            toolset = toolset + Toolset.from_imports(imports, self.config.base_dir)
        return toolset

    @cached_property
    def digest(self) -> str:
        """What the app is, apart from its index: fixed for the life of the definition (the
        prompts and tools it loaded are the ones it runs with)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode())
        for ref in (self.config.prompts.system, self.config.prompts.examples):
            if ref:
                path = self.config.resolve(ref)
                digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        digest.update(_canonical(self.toolset.to_openai()).encode())
        return digest.hexdigest()

    def version_for(self, index_version: str) -> str:
        """The app version: this definition's hash with the index version."""
        digest = hashlib.sha256(self.digest.encode())
        digest.update(index_version.encode())
        return digest.hexdigest()[:16]

    def content(self, index_version: str, git_commit: str | None) -> dict[str, Any]:
        """Everything that makes this app, for a release record."""
        p = self.prompts
        return {
            "config": self.config.model_dump(mode="json"),
            "prompts": {
                "system": p.system,
                "examples": [{"question": e.question, "answer": e.answer} for e in p.examples],
            },
            "tools": self.toolset.to_openai(),
            "models": [self.config.model.id, *self.config.model.fallbacks],
            "index_version": index_version,
            "git_commit": git_commit,
        }


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
