"""Turn files under an ingest root into :class:`~keel.rag.types.Document` values.

:func:`iter_documents` walks the given paths and yields a ``Document`` for every file it loads
and a ``Skipped`` (with a short reason) for every file or JSONL record it does not. A bad file
never stops the walk; only a bad *argument* (a path that does not exist or leaves the ingest
root) raises :class:`~keel.errors.UsageError`, before anything is yielded.

Include and exclude patterns are globs matched against the root-relative posix path: ``*``,
``?`` and ``[...]`` stay within one path segment, ``**`` spans any number of segments (also
none), and patterns are anchored at the root (``*.md`` matches only top-level files; use
``**/*.md`` for every level). A path is excluded when it or one of its parent directories
matches an exclude pattern, so ``drafts`` and ``drafts/**`` both exclude everything below
``drafts/``.
"""

from __future__ import annotations

import codecs
import datetime as _dt
import io
import json
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from keel.errors import UsageError
from keel.rag.types import Document, Metadata, Skipped

if TYPE_CHECKING:
    from bs4 import BeautifulSoup
    from bs4.element import Tag

    from keel.rag.pdf_budget import PdfBudget

__all__ = ["SUPPORTED_SUFFIXES", "iter_documents"]

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl"}
)

_MB = 1024 * 1024
_DEFAULT_MAX_BYTES = 20 * _MB


# --------------------------------------------------------------------------- public entry point


def iter_documents(
    paths: Sequence[str | Path],
    *,
    root: Path,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_bytes: int = _DEFAULT_MAX_BYTES,
    pdf: PdfBudget | None = None,
) -> Iterator[Document | Skipped]:
    """Load every supported file under ``paths`` (files or directories inside ``root``).

    Relative paths are resolved against ``root``. Every path is checked first; a missing path or
    one that resolves outside ``root`` raises :class:`UsageError` at call time. Directories are
    walked recursively in sorted order, skipping hidden entries (names starting with ``.``).
    ``include`` filters walked files (files named in ``paths`` are not filtered by it);
    ``exclude`` applies to everything. Files larger than ``max_bytes`` are skipped; JSONL files
    are streamed, so for them the limit applies to each line instead of the whole file.
    ``pdf``: parse each PDF in a child process under this time and page budget (a PDF over
    it is skipped, with the reason); None parses PDFs here, without a budget.
    """
    root = Path(root).resolve()
    if max_bytes <= 0:
        raise UsageError(f"max_bytes must be positive, got {max_bytes}")
    targets = [_validate(p, root) for p in paths]
    return _iter(targets, root, tuple(include), tuple(exclude), max_bytes, pdf)


def _validate(path: str | Path, root: Path) -> tuple[Path, Path, PurePosixPath]:
    """Check one given path; return (lexical absolute path, resolved path, root-relative)."""
    given = Path(path)
    absolute = given if given.is_absolute() else root / given
    lexical = Path(os.path.normpath(absolute))
    if not lexical.exists():
        if lexical.is_symlink():
            raise UsageError(f"no such file or directory (broken symlink): {path}")
        raise UsageError(f"no such file or directory: {path}")
    try:
        resolved = lexical.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"cannot resolve path: {path} ({exc})") from exc
    if not resolved.is_relative_to(root):
        raise UsageError(f"path outside the ingest root: {path}")
    rel = lexical.relative_to(root) if lexical.is_relative_to(root) else resolved.relative_to(root)
    return lexical, resolved, PurePosixPath(rel.as_posix())


def _iter(
    targets: list[tuple[Path, Path, PurePosixPath]],
    root: Path,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    max_bytes: int,
    pdf: PdfBudget | None = None,
) -> Iterator[Document | Skipped]:
    seen: set[str] = set()
    walker = _Walker(root, include, exclude, max_bytes, seen, pdf)
    for lexical, resolved, rel in targets:
        if _excluded(rel, exclude, with_parents=True):
            continue
        if resolved.is_dir():
            yield from walker.walk(lexical, resolved, rel, frozenset({resolved}))
        else:
            yield from walker.file(lexical, rel)


class _Walker:
    """Recursive, deterministic directory walk that stays inside the ingest root."""

    def __init__(
        self,
        root: Path,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        max_bytes: int,
        seen: set[str],
        pdf: PdfBudget | None = None,
    ) -> None:
        self.root = root
        self.include = include
        self.exclude = exclude
        self.max_bytes = max_bytes
        self.seen = seen
        self.pdf = pdf

    def file(self, path: Path, rel: PurePosixPath) -> Iterator[Document | Skipped]:
        """Load one file once per run (overlapping arguments do not load it twice)."""
        source = _source(rel)
        if source in self.seen:
            return
        self.seen.add(source)
        yield from _load_file(path, source, self.max_bytes, self.pdf)

    def walk(
        self, directory: Path, real: Path, rel: PurePosixPath, stack: frozenset[Path]
    ) -> Iterator[Document | Skipped]:
        """Walk ``directory`` (whose resolved path is ``real``); ``stack`` holds its ancestors."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(_source(rel), f"cannot read directory: {_os_reason(exc)}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child_rel = rel / entry.name
            child = Path(entry.path)
            if _excluded(child_rel, self.exclude, with_parents=False):
                continue
            source = _source(child_rel)
            try:
                is_link = entry.is_symlink()
                if is_link:
                    try:
                        child_real = child.resolve(strict=True)
                    except (OSError, RuntimeError):
                        # RuntimeError: a symlink loop on older Pythons.
                        yield Skipped(source, "broken symlink")
                        continue
                    if not child_real.is_relative_to(self.root):
                        yield Skipped(source, "symlink leads outside the ingest root")
                        continue
                    mode = child_real.stat().st_mode
                else:
                    child_real = real / entry.name
                    mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                yield Skipped(source, f"cannot read: {_os_reason(exc)}")
                continue
            if stat.S_ISDIR(mode):
                if child_real in stack:
                    yield Skipped(source, "symlink cycle")
                    continue
                yield from self.walk(child, child_real, child_rel, stack | {child_real})
            elif self.include and not _matches_any(child_rel, self.include):
                continue
            elif not stat.S_ISREG(mode):
                yield Skipped(source, "not a regular file")
            else:
                yield from self.file(child, child_rel)


def _source(rel: PurePosixPath) -> str:
    return rel.as_posix()


# --------------------------------------------------------------------------- globs


def _excluded(rel: PurePosixPath, patterns: tuple[str, ...], *, with_parents: bool) -> bool:
    """True when ``rel`` (or, with ``with_parents``, one of its parents) matches a pattern."""
    if not patterns or rel.as_posix() == ".":
        return False
    candidates = [rel, *rel.parents] if with_parents else [rel]
    return any(_matches_any(c, patterns) for c in candidates if c.as_posix() != ".")


def _matches_any(rel: PurePosixPath, patterns: Sequence[str]) -> bool:
    text = rel.as_posix()
    return any(_glob_regex(p).fullmatch(text) is not None for p in patterns)


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a root-relative glob where ``**`` spans zero or more path segments."""
    pattern = pattern.strip()
    if pattern.startswith("./"):
        pattern = pattern[2:]
    pattern = pattern.strip("/")
    if not pattern:
        return re.compile(r"(?!)")  # matches nothing
    segments = [s for s in pattern.split("/") if s]
    out: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == "**":
            if i == last:
                # "a/**" also matches "a" itself; a lone "**" matches everything.
                if out:
                    out[-1] = out[-1][:-1]  # drop the "/" that followed the previous segment
                    out.append("(?:/.*)?")
                else:
                    out.append(".*")
            else:
                out.append("(?:[^/]+/)*")
        else:
            out.append(_segment_regex(seg) + ("" if i == last else "/"))
    return re.compile("".join(out), re.DOTALL)


def _segment_regex(seg: str) -> str:
    """Translate one glob segment (``*``, ``?``, ``[...]``) to a regex that never crosses ``/``."""
    res: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        i += 1
        if c == "*":
            while i < n and seg[i] == "*":
                i += 1
            res.append("[^/]*")
        elif c == "?":
            res.append("[^/]")
        elif c == "[":
            j = i
            if j < n and seg[j] == "!":
                j += 1
            if j < n and seg[j] == "]":
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:
                res.append(re.escape(c))
                continue
            body = seg[i:j].replace("\\", "\\\\")
            i = j + 1
            if body.startswith(("!", "^")):
                res.append("[^/" + body[1:] + "]")
            else:
                res.append("[" + body + "]")
        else:
            res.append(re.escape(c))
    return "".join(res)


# --------------------------------------------------------------------------- files


def _load_file(
    path: Path, source: str, max_bytes: int, pdf: PdfBudget | None = None
) -> Iterator[Document | Skipped]:
    """Load one file by its suffix; every failure becomes a ``Skipped``."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        kind = f"'{suffix}'" if suffix else "(no extension)"
        yield Skipped(source, f"unsupported file type {kind}")
        return
    try:
        if not path.is_file():
            yield Skipped(source, "not a regular file")
            return
    except OSError as exc:
        yield Skipped(source, f"cannot read: {_os_reason(exc)}")
        return
    if suffix == ".jsonl":
        yield from _load_jsonl(path, source, max_bytes)
        return
    try:
        data = _read_bytes(path, max_bytes)
    except OSError as exc:
        yield Skipped(source, f"cannot read: {_os_reason(exc)}")
        return
    if data is None:
        yield Skipped(source, f"file is larger than {_size(max_bytes)}")
        return
    loader = _LOADERS[suffix]
    if suffix == ".pdf" and pdf is not None:
        from keel.rag.pdf_budget import load_pdf_within

        loader = lambda d, p, s: load_pdf_within(d, p, s, pdf)  # noqa: E731
    try:
        result = loader(data, path, source)
    except Exception as exc:  # a loader failure must never stop the walk
        result = Skipped(source, f"could not load {suffix[1:]} file: {_exc_reason(exc)}")
    if isinstance(result, Document) and not result.text.strip():
        result = Skipped(source, "empty document")
    yield result


def _read_bytes(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when it is larger than ``max_bytes``."""
    if path.stat().st_size > max_bytes:
        return None
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    return None if len(data) > max_bytes else data


def _decode(data: bytes) -> str | None:
    """UTF-8 (BOM allowed) with line endings normalised; None when it is not UTF-8 text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None  # binary data, or UTF-16 without a BOM
    return _newlines(text)


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------- text and markdown


def _load_text(data: bytes, path: Path, source: str) -> Document | Skipped:
    text = _decode(data)
    if text is None:
        return Skipped(source, "not UTF-8 text")
    return Document(id=source, text=text, source=source, title=path.stem, format="text")


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?:(.*?)\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")


def _load_markdown(data: bytes, path: Path, source: str) -> Document | Skipped:
    text = _decode(data)
    if text is None:
        return Skipped(source, "not UTF-8 text")
    metadata: Metadata = {}
    title = ""
    front = _front_matter(text)
    if front is not None:
        fields, text = front
        raw_title = fields.pop("title", None)
        title = str(raw_title).strip() if raw_title is not None else ""
        metadata = fields
    if not title:
        title = _first_h1(text) or path.stem
    return Document(
        id=source, text=text, source=source, title=title, format="markdown", metadata=metadata
    )


def _front_matter(text: str) -> tuple[Metadata, str] | None:
    """Split a leading YAML front matter block off ``text``; None when there is none."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return None
    import yaml

    try:
        loaded = yaml.safe_load(match.group(1) or "")
    except yaml.YAMLError:
        return None  # not front matter after all (e.g. a thematic break)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        return None
    return _with_labels(loaded, dates=True), text[match.end() :]  # bad labels: skipped


def _with_labels(values: dict[Any, Any], *, dates: bool = False) -> Metadata:
    """:func:`_scalars`, and the access labels of a ``labels`` list (or comma-separated
    string) as label keys (:mod:`keel.rag.access`)."""
    from keel.rag.access import label_metadata, parse_labels

    out = _scalars({k: v for k, v in values.items() if k != "labels"}, dates=dates)
    raw = values.get("labels")
    if raw is not None:
        if not isinstance(raw, str | list):
            raise UsageError("metadata.labels must be a list of strings")
        labels = parse_labels(raw)
        if labels:
            out.update(label_metadata(labels))
    return out


def _scalars(values: dict[Any, Any], *, dates: bool = False) -> Metadata:
    """Keep the str/int/float/bool values of a mapping (dates as ISO strings if ``dates``);
    label keys are Keel's (:mod:`keel.rag.access`), never taken from a document."""
    from keel.rag.access import LABEL_PREFIX

    out: Metadata = {}
    for key, value in values.items():
        if str(key).startswith(LABEL_PREFIX):
            continue
        if isinstance(value, str | int | float | bool):
            out[str(key)] = value
        elif dates and isinstance(value, _dt.date):
            out[str(key)] = value.isoformat()
    return out


def _first_h1(text: str) -> str:
    """The first level-1 ATX heading outside fenced code blocks, or ""."""
    fence: str | None = None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            continue
        if fence is None:
            h = _ATX_H1.match(line)
            if h:
                return h.group(1).strip()
    return ""


# --------------------------------------------------------------------------- html

_DROP_TAGS = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "iframe",
        "svg",
        "canvas",
        "object",
        "embed",
        "head",
        "title",
        "meta",
        "link",
        "math",
    }
)
_BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "caption",
        "dd",
        "details",
        "dialog",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "header",
        "hr",
        "html",
        "legend",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "ul",
    }
)
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
# Private-use stand-ins that keep <pre> whitespace through the line clean-up.
_PRE_NL, _PRE_SPACE, _PRE_TAB = "\ue000", "\ue001", "\ue002"
_PARA = "\ue003"  # a paragraph break (blank line); "\n" is a line break
_BREAKS = re.compile("[ \n\ue003]*[\n\ue003][ \n\ue003]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ue000-\ue003]")
_PARA_TAGS = frozenset({"p", "pre", "blockquote", "table", "ul", "ol", "dl", "figure"})
_SPACES = re.compile(r"\s+")


def _load_html(data: bytes, path: Path, source: str) -> Document | Skipped:
    text = _decode(data)
    if text is None:
        text = _decode_declared(data)
        if text is None:
            return Skipped(source, "not UTF-8 text")
    from bs4 import BeautifulSoup

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soup = BeautifulSoup(text, "lxml")
    title = ""
    head = soup.head
    title_tag = head.find("title") if head is not None else None
    if title_tag is not None:
        title = _SPACES.sub(" ", title_tag.get_text()).strip()
    body_text = _html_text(soup)
    if not title:
        h1 = _first_visible(soup, "h1")
        if h1 is not None:
            title = _inline(_render(h1, pre=False))
    return Document(
        id=source, text=body_text, source=source, title=title or path.stem, format="html"
    )


def _decode_declared(data: bytes) -> str | None:
    """Decode HTML that is not UTF-8 but declares its charset (``<meta charset=...>``)."""
    from bs4.dammit import EncodingDetector

    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    if not declared:
        return None
    try:
        codecs.lookup(declared)
        return _newlines(data.decode(declared))
    except (LookupError, UnicodeDecodeError):
        return None


def _html_text(soup: BeautifulSoup) -> str:
    """Visible text of a parsed page, with markdown headings and one blank line between blocks."""
    rendered = _render(soup, pre=False)
    # A run of breaks is a blank line when it holds a paragraph break, else a line break.
    rendered = _BREAKS.sub(lambda m: "\n\n" if _PARA in m.group() else "\n", rendered)
    lines = [re.sub(r" {2,}", " ", line.strip(" ")) for line in rendered.split("\n")]
    text = "\n".join(lines).strip("\n")
    return text.replace(_PRE_NL, "\n").replace(_PRE_SPACE, " ").replace(_PRE_TAB, "\t")


def _hidden(tag: Tag) -> bool:
    """True for elements that a browser does not show."""
    name = tag.name.lower()
    if name in _DROP_TAGS:
        return True
    attrs = tag.attrs
    if "hidden" in attrs:
        return True
    if str(attrs.get("aria-hidden", "")).strip().lower() == "true":
        return True
    if name == "input" and str(attrs.get("type", "")).strip().lower() == "hidden":
        return True
    style = attrs.get("style")
    if style:
        for decl in str(style).split(";"):
            prop, _, value = decl.partition(":")
            prop = prop.strip().lower()
            value = "".join(value.lower().split()).removesuffix("!important")
            if (prop == "display" and value == "none") or (
                prop == "visibility" and value in ("hidden", "collapse")
            ):
                return True
    return False


def _first_visible(soup: BeautifulSoup, name: str) -> Tag | None:
    for tag in soup.find_all(name):
        if not any(_hidden(t) for t in (tag, *tag.parents) if t.name != "[document]"):
            return tag
    return None


def _render(node: Tag, *, pre: bool) -> str:
    """Text of ``node``'s visible content; ``\\n`` marks a block boundary."""
    from bs4.element import CData, NavigableString, Tag

    parts: list[str] = []
    for child in node.children:
        if isinstance(child, Tag):
            parts.append(_render_tag(child, pre=pre))
        elif isinstance(child, NavigableString):
            if type(child) is not NavigableString and not isinstance(child, CData):
                continue  # comments, doctype, processing instructions, declarations
            s = _CONTROL.sub("", str(child))
            if pre:
                s = s.replace("\n", _PRE_NL).replace(" ", _PRE_SPACE).replace("\t", _PRE_TAB)
            else:
                s = _SPACES.sub(" ", s)
            parts.append(s)
    return "".join(parts)


def _render_tag(tag: Tag, *, pre: bool) -> str:
    if _hidden(tag):
        return ""
    name = tag.name.lower()
    if name in _HEADINGS:
        heading = _inline(_render(tag, pre=False))
        return f"{_PARA}{'#' * _HEADINGS[name]} {heading}{_PARA}" if heading else ""
    if name == "br":
        return _PRE_NL if pre else "\n"
    if name == "li":
        return "\n- " + _render(tag, pre=pre).strip(" \n" + _PARA) + "\n"
    if name == "tr":
        cells = [
            _inline(_render(c, pre=False))
            for c in tag.find_all(["td", "th"], recursive=False)
            if not _hidden(c)
        ]
        return "\n" + " | ".join(c for c in cells if c) + "\n"
    inner = _render(tag, pre=pre or name == "pre")
    if name in _BLOCK_TAGS:
        para = name in _PARA_TAGS and not (name in ("ul", "ol") and tag.find_parent("li"))
        gap = _PARA if para else "\n"
        return gap + inner + gap
    if name in ("td", "th"):
        return " " + inner + " "
    return inner


def _inline(text: str) -> str:
    """Collapse rendered text onto one line."""
    for mark in (_PRE_NL, _PRE_SPACE, _PRE_TAB, _PARA):
        text = text.replace(mark, " ")
    return _SPACES.sub(" ", text).strip()


# --------------------------------------------------------------------------- pdf


def _load_pdf(data: bytes, path: Path, source: str) -> Document | Skipped:
    return load_pdf(data, path, source)


def load_pdf(
    data: bytes, path: Path, source: str, *, max_pages: int | None = None
) -> Document | Skipped:
    """One PDF's text (in this process: :mod:`keel.rag.pdf_budget` runs it under a time
    limit). A PDF of more than ``max_pages`` pages is skipped before any page is read."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                return Skipped(source, "encrypted PDF (needs a password)")
            pages = len(reader.pages)
            if max_pages is not None and pages > max_pages:
                limit = f"the limit of {max_pages} ([rag] pdf_max_pages)"
                return Skipped(source, f"PDF has {pages} pages, over {limit}")
            texts = [_newlines(page.extract_text() or "").strip() for page in reader.pages]
            info = reader.metadata
            raw_title = info.title if info is not None else None
        except PdfReadError as exc:
            return Skipped(source, f"not a readable PDF: {_exc_reason(exc)}")
    if not any(t.strip() for t in texts):
        return Skipped(source, "no extractable text (scanned PDF?)")
    offsets: list[int] = []
    pos = 0
    for t in texts:
        offsets.append(pos)
        pos += len(t) + 2
    title = str(raw_title).strip() if raw_title else ""
    return Document(
        id=source,
        text="\n\n".join(texts),
        source=source,
        title=title or path.stem,
        format="pdf",
        pages=tuple(offsets),
    )


# --------------------------------------------------------------------------- jsonl


def _load_jsonl(path: Path, source: str, max_bytes: int) -> Iterator[Document | Skipped]:
    """Stream a JSONL file: one document per line; bad lines are skipped one by one."""
    seen: set[str] = set()
    records = 0
    try:
        with open(path, "rb") as f:
            for lineno, raw in _lines(f, max_bytes):
                where = f"{source}:{lineno}"
                if raw is None:
                    records += 1
                    yield Skipped(where, f"line is larger than {_size(max_bytes)}")
                    continue
                result = _jsonl_record(raw, lineno, source)
                if result is None:
                    continue
                records += 1
                if isinstance(result, Document):
                    if result.id in seen:
                        yield Skipped(where, f"duplicate id {result.id!r}")
                        continue
                    seen.add(result.id)
                yield result
    except OSError as exc:
        yield Skipped(source, f"cannot read: {_os_reason(exc)}")
        return
    if records == 0:
        yield Skipped(source, "no records")


def _lines(f: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Numbered lines of ``f``; ``None`` for a line longer than ``max_bytes`` (not kept)."""
    lineno = 0
    while True:
        line = f.readline(max_bytes + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:  # drop the rest of the over-long line
                rest = f.readline(_MB)
                if not rest or rest.endswith(b"\n"):
                    break
            yield lineno, None
            continue
        yield lineno, line


def _jsonl_record(raw: bytes, lineno: int, source: str) -> Document | Skipped | None:
    """One JSONL line as a Document, a Skipped, or None for a blank line."""
    where = f"{source}:{lineno}"
    try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError:
        return Skipped(where, "not UTF-8 text")
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return Skipped(where, f"invalid JSON: {exc.msg}")
    if not isinstance(record, dict):
        return Skipped(where, "not a JSON object")
    raw_id = record.get("_id")
    if raw_id is None:
        raw_id = record.get("id")
    if raw_id is None:
        return Skipped(where, "no '_id' or 'id' field")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | float):
        return Skipped(where, "id is not a string or a number")
    doc_id = str(raw_id)
    if not doc_id.strip():
        return Skipped(where, "empty id")
    text = record.get("text")
    if text is None:
        return Skipped(where, "no 'text' field")
    if not isinstance(text, str):
        return Skipped(where, "'text' is not a string")
    text = _newlines(text)
    if not text.strip():
        return Skipped(where, "empty document")
    title = record.get("title")
    meta = record.get("metadata")
    try:
        metadata = _with_labels(meta) if isinstance(meta, dict) else {}
    except UsageError as exc:
        return Skipped(where, str(exc))
    return Document(
        id=doc_id,
        text=text,
        source=source,
        title=title.strip() if isinstance(title, str) else "",
        format="jsonl",
        metadata=metadata,
    )


# --------------------------------------------------------------------------- helpers

_LOADERS: dict[str, Callable[[bytes, Path, str], Document | Skipped]] = {
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".txt": _load_text,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
}


def _size(n: int) -> str:
    if n >= _MB:
        return f"{n / _MB:g} MB"
    if n >= 1024:
        return f"{n / 1024:g} KB"
    return f"{n} bytes"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _exc_reason(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > 120:
        msg = msg[:117] + "..."
    return msg or type(exc).__name__
