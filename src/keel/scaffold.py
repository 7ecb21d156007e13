"""``keel init``: create a working Keel app from the bundled template.

The template lives in ``keel/_scaffold/app/`` and is read through :mod:`importlib.resources`, so
it works from a source checkout and from an installed wheel alike. Every file is copied as it is,
keeping sub-folders, with two exceptions:

- ``keel.toml`` gets the app name substituted for ``{{app_name}}``, and with ``guards=False``
  (``keel init --no-guards``) loses its guard policy block (between the ``# >>> guard policy``
  and ``# <<< guard policy`` lines), leaving ``[guards]`` with no validator;
- a template file named ``gitignore`` is written as ``.gitignore`` (a dot-file inside a package
  would act as an ignore file for this repository and is easy for packaging tools to drop).

Nothing is written unless every file can be: an existing app, or any existing file the scaffold
would write, is refused with :class:`~keel.errors.UsageError` unless ``force=True``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from keel.errors import UsageError

__all__ = ["DEFAULT_APP_NAME", "init_app", "sanitize_app_name", "template_files"]

DEFAULT_APP_NAME = "keel-app"
_NAME_PLACEHOLDER = "{{app_name}}"
_POLICY = re.compile(r"^# >>> guard policy.*?^# <<< guard policy\n", re.M | re.S)
_NO_POLICY = (
    "# No validator runs: this app was created with `keel init --no-guards`. The policy\n"
    "# `keel init` writes otherwise is in the README (Guardrails).\n"
)
_RENAMES = {"gitignore": ".gitignore"}
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
_NOT_NAME = re.compile(r"[^a-z0-9]+")


def sanitize_app_name(raw: str) -> str:
    """Lower-case ``raw`` and reduce it to ``[a-z0-9-]`` (runs of anything else become ``-``).

    Returns an empty string when nothing usable is left.
    """
    return _NOT_NAME.sub("-", raw.lower()).strip("-")


def _template_root() -> Traversable:
    return resources.files("keel") / "_scaffold" / "app"


def _walk(node: Traversable, prefix: PurePosixPath) -> Iterator[tuple[PurePosixPath, Traversable]]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            if child.name not in _SKIP_DIRS:
                yield from _walk(child, prefix / child.name)
        elif child.is_file() and PurePosixPath(child.name).suffix not in _SKIP_SUFFIXES:
            yield prefix / _RENAMES.get(child.name, child.name), child


def template_files() -> dict[PurePosixPath, Traversable]:
    """The scaffold's files: target path (relative, posix) → template resource."""
    files = dict(_walk(_template_root(), PurePosixPath()))
    if PurePosixPath("keel.toml") not in files:  # pragma: no cover - a packaging mistake
        raise UsageError("the keel app template is missing keel.toml (broken installation)")
    return files


def _conflicts(directory: Path, targets: list[PurePosixPath], force: bool) -> str | None:
    """The reason the scaffold cannot be written into ``directory``, or None."""
    if directory.exists() and not directory.is_dir():
        return f"{directory} exists and is not a directory"
    if not force and (directory / "keel.toml").exists():
        return f"{directory} already contains a keel app (keel.toml); use --force to overwrite"
    for rel in targets:
        path = directory.joinpath(*rel.parts)
        # A parent that exists as a file cannot hold the scaffold's file, even with force.
        for parent in list(reversed(path.relative_to(directory).parents))[1:]:
            blocker = directory / parent
            if blocker.exists() and not blocker.is_dir():
                return f"{blocker} exists and is not a directory"
        if path.is_dir():
            return f"{path} exists and is a directory"
        if not force and (path.exists() or path.is_symlink()):
            return f"{path} already exists; use --force to overwrite the scaffold's files"
    return None


# keel.agents.models.EXTRACTIVE, spelt out: importing it would load the agents area into
# `keel init` (tests/test_scaffold.py checks the two agree)
_EXTRACTIVE = "keel:extractive"
_MODEL_LINE = f'id = "{_EXTRACTIVE}"\n'
_GROUNDING_OFF = re.compile(
    r"^# With a generative model .*?\n# \[guards\.output\.grounding\]\n# on_fail = \"fix\"\n",
    re.M | re.S,
)
_GROUNDING_ON = (
    "# The model is generative: sentences the retrieved passages do not support are dropped.\n"
    '[guards.output.grounding]\non_fail = "fix"\n'
)


def check_model_id(model: str) -> str:
    """``model`` as ``keel.toml``'s ``[model] id`` takes it; :class:`UsageError` when it is
    not one (the model itself is reached only when the app runs)."""
    model = model.strip()
    if not model or not model.isprintable() or any(c in model for c in '"\\'):
        raise UsageError(f"model id {model!r} is not usable (e.g. openai:gpt-4o-mini)")
    if model.startswith("keel:") and model != _EXTRACTIVE:
        raise UsageError(f"unknown embedded model {model!r} (known: {_EXTRACTIVE})")
    provider, _, name = model.partition(":")
    if model != _EXTRACTIVE and (not provider or not name):
        raise UsageError(f"model id {model!r} needs <provider>:<model>, e.g. openai:gpt-4o-mini")
    return model


def _keel_toml(template: str, app_name: str, guards: bool, model: str | None = None) -> str:
    text = template.replace(_NAME_PLACEHOLDER, app_name)
    if _POLICY.search(text) is None or _MODEL_LINE not in text:  # pragma: no cover
        raise UsageError("the keel app template is broken (reinstall keel)")
    if model is not None and model != _EXTRACTIVE:
        text = text.replace(_MODEL_LINE, f'id = "{model}"\n', 1)
        # a generative model writes sentences of its own: grounding checks them
        text, found = _GROUNDING_OFF.subn(_GROUNDING_ON, text)
        if found != 1:  # pragma: no cover - a packaging mistake
            raise UsageError("the keel app template is broken (reinstall keel)")
    return text if guards else _POLICY.sub(_NO_POLICY, text)


def init_app(
    directory: Path,
    *,
    name: str | None = None,
    force: bool = False,
    guards: bool = True,
    model: str | None = None,
) -> list[Path]:
    """Create a working Keel app in ``directory`` (created if missing).

    Args:
        directory: Where the app goes. It may exist and hold unrelated files.
        name: The app name written into ``keel.toml``; default: the directory's name. Either is
            reduced to ``[a-z0-9-]``.
        force: Overwrite the scaffold's own files when they exist. Other files are never touched.
        guards: Write the default guard policy into ``keel.toml`` (``False``: no validator).
        model: ``[model] id`` (default ``keel:extractive``). A generative model also gets
            output grounding in the guard policy.

    Returns:
        The files written, sorted.

    Raises:
        UsageError: The directory already holds an app or one of the scaffold's files (without
            ``force``), a path is in the way, or ``name`` has nothing usable. Nothing is written.
    """
    directory = Path(directory).expanduser()
    if name is not None:
        app_name = sanitize_app_name(name)
        if not app_name:
            raise UsageError(f"app name {name!r} has no letters or digits")
    else:
        app_name = sanitize_app_name(directory.resolve().name) or DEFAULT_APP_NAME
    if model is not None:
        model = check_model_id(model)

    files = template_files()
    targets = sorted(files)
    reason = _conflicts(directory, targets, force)
    if reason is not None:
        raise UsageError(reason)

    contents: dict[PurePosixPath, bytes] = {}
    for rel in targets:
        data = files[rel].read_bytes()
        if rel == PurePosixPath("keel.toml"):
            data = _keel_toml(data.decode("utf-8"), app_name, guards, model).encode("utf-8")
        contents[rel] = data

    written: list[Path] = []
    try:
        for rel in targets:
            path = directory.joinpath(*rel.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(contents[rel])
            written.append(path)
    except OSError as exc:
        raise UsageError(f"cannot write {directory}: {exc.strerror or exc}") from exc
    return sorted(written)
