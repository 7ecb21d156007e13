"""Keel's errors, all in one place.

Every error Keel raises on purpose derives from :class:`KeelError`. The hierarchy is shallow and
says who has to act:

``KeelError``
    The base class. ``exit_code`` is what the CLI exits with when it stops on this error.

    ``ConfigError`` (exit 2)
        A developer mistake in configuration: a bad ``keel.toml``, an unknown model id, an
        embedding model that does not match the collection, a bad setting in the environment.

        ``ModelWithdrawn`` (exit 2), a ``ConfigError``
            A tuned model the configuration names was withdrawn (a person's data erased,
            perhaps by another process): the app may not use it, even if it loaded it before.

    ``UsageError`` (exit 2)
        A bad call or bad input: a path outside the ingest root, a malformed filter, an empty
        query. Nothing has been written when it is raised.

    ``StoreError`` (exit 1)
        A backend (the keel database, Chroma) failed or could not be reached while running.
        What was already stored is left as it was.

    ``ModelError`` (exit 1)
        Every configured model failed for a call (after retries with backoff on timeouts,
        429 and 5xx, and after the fallback models). ``.attempts`` lists what was tried.

    ``GuardTripped`` (exit 1)
        A guard at a hook point (input, retrieved context, tool arguments, tool result,
        output) stopped a run. ``.message`` is what the user is told; ``.result`` carries the
        guard's decision for traces.

    ``ToolDefinitionError`` (exit 2)
        A function given to ``@tool`` cannot be turned into a tool. It carries every problem
        found (``.problems``), not only the first.

Errors from libraries that Keel wraps are chained (``raise ... from exc``) so the cause is kept.
"""

from __future__ import annotations


class KeelError(Exception):
    """Base class of every error Keel raises on purpose."""

    exit_code: int = 1


class ConfigError(KeelError):
    """The app's configuration (keel.toml, KEEL_* settings) is wrong."""

    exit_code = 2


class ModelWithdrawn(ConfigError):
    """A tuned model the configuration names was withdrawn since it was trained."""


class UsageError(KeelError):
    """A call or an input is not valid; nothing was changed."""

    exit_code = 2


class StoreError(KeelError):
    """A storage backend (database, vector store) failed while running."""

    exit_code = 1


class ModelError(KeelError):
    """The model provider(s) failed; ``attempts`` holds ``(model id, error)`` pairs."""

    exit_code = 1

    def __init__(self, message: str, attempts: list[tuple[str, str]] | None = None) -> None:
        self.attempts = list(attempts or [])
        super().__init__(message)


class GuardTripped(KeelError):
    """A guard stopped the run; ``message`` is safe to show the user."""

    exit_code = 1

    def __init__(
        self, message: str, *, point: str = "", result: object = None, reask: bool = False
    ) -> None:
        self.message = message
        self.point = point
        self.result = result
        self.reask = reask  # an output guard asks the model to answer again
        super().__init__(f"guard tripped at {point or 'a hook point'}: {message}")


class ToolDefinitionError(KeelError):
    """A function cannot be made into a tool; ``problems`` lists every reason."""

    exit_code = 2

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = list(problems)
        super().__init__(f"tool {name!r} is not valid: " + "; ".join(self.problems))


__all__ = [
    "ConfigError",
    "GuardTripped",
    "KeelError",
    "ModelError",
    "ModelWithdrawn",
    "StoreError",
    "ToolDefinitionError",
    "UsageError",
]
