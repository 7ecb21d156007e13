from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keel.errors import UsageError
from keel.rag import loaders
from keel.rag.loaders import SUPPORTED_SUFFIXES, iter_documents
from keel.rag.types import Document, Skipped

# --------------------------------------------------------------------------- helpers


def _load(
    root: Path,
    *paths: str | Path,
    include: tuple[str, ...] | list[str] = (),
    exclude: tuple[str, ...] | list[str] = (),
    max_bytes: int = 20 * 1024 * 1024,
) -> list[Document | Skipped]:
    return list(
        iter_documents(
            list(paths) or ["."], root=root, include=include, exclude=exclude, max_bytes=max_bytes
        )
    )


def _docs(items: list[Document | Skipped]) -> list[Document]:
    return [i for i in items if isinstance(i, Document)]


def _skips(items: list[Document | Skipped]) -> dict[str, str]:
    return {i.source: i.reason for i in items if isinstance(i, Skipped)}


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text stream per page, one line per string."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    n = len(pages)
    page_ids = [4 + 2 * i for i in range(n)]
    objs: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: (
            f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {n} >>"
        ).encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for i, lines in enumerate(pages):
        pid, cid = page_ids[i], page_ids[i] + 1
        objs[pid] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {cid} 0 R >>"
        ).encode()
        shown = " T* ".join(f"({esc(line)}) Tj" for line in lines)
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET".encode()
        objs[cid] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    info_id = None
    if title is not None:
        info_id = max(objs) + 1
        objs[info_id] = f"<< /Title ({esc(title)}) >>".encode()
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets: dict[int, int] = {}
    for oid in sorted(objs):
        offsets[oid] = out.tell()
        out.write(b"%d 0 obj\n" % oid + objs[oid] + b"\nendobj\n")
    xref = out.tell()
    size = max(objs) + 1
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % size)
    for oid in range(1, size):
        out.write(b"%010d 00000 n \n" % offsets[oid])
    trailer = f"<< /Size {size} /Root 1 0 R" + (f" /Info {info_id} 0 R" if info_id else "") + " >>"
    out.write(f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


# --------------------------------------------------------------------------- markdown and text


def test_supported_suffixes() -> None:
    assert {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl"} == SUPPORTED_SUFFIXES


def test_markdown_front_matter_goes_to_metadata_and_title(tmp_path: Path) -> None:
    _write(
        tmp_path / "guide" / "setup.md",
        "---\ntitle: Setup guide\nowner: docs-team\nversion: 3\nweight: 0.5\ndraft: false\n"
        "published: 2024-05-01\ntags: [a, b]\nnested: {x: 1}\nempty:\n---\n"
        "# Installing\n\nRun the installer.\n",
    )
    [doc] = _load(tmp_path)
    assert isinstance(doc, Document)
    assert doc.id == doc.source == "guide/setup.md"
    assert doc.format == "markdown"
    assert doc.title == "Setup guide"
    assert doc.text == "# Installing\n\nRun the installer.\n"
    assert doc.metadata == {
        "owner": "docs-team",
        "version": 3,
        "weight": 0.5,
        "draft": False,
        "published": "2024-05-01",
    }


def test_markdown_title_is_first_h1_outside_code_fences(tmp_path: Path) -> None:
    _write(
        tmp_path / "a.markdown",
        "Intro line.\n\n```bash\n# not a title\n```\n\n## Sub first\n\n# Real Title #\n\nBody\n",
    )
    [doc] = _docs(_load(tmp_path))
    assert doc.title == "Real Title"
    assert doc.format == "markdown"
    assert doc.text.startswith("Intro line.")
    assert doc.metadata == {}


def test_markdown_without_heading_falls_back_to_stem(tmp_path: Path) -> None:
    _write(tmp_path / "release-notes.md", "Only text.\n")
    [doc] = _docs(_load(tmp_path))
    assert doc.title == "release-notes"


def test_markdown_leading_rule_that_is_not_yaml_is_kept(tmp_path: Path) -> None:
    text = "---\nkey: [unclosed\n---\nText after.\n"
    _write(tmp_path / "a.md", text)
    [doc] = _docs(_load(tmp_path))
    assert doc.text == text
    assert doc.metadata == {}


def test_text_file_bom_and_line_endings(tmp_path: Path) -> None:
    _write(tmp_path / "notes.txt", "\ufeffline one\r\nline two\rline three\n".encode())
    [doc] = _docs(_load(tmp_path))
    assert doc.text == "line one\nline two\nline three\n"
    assert doc.title == "notes"
    assert doc.format == "text"
    assert doc.id == "notes.txt"


def test_undecodable_and_binary_text_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "latin.txt", "caf\xe9 cr\xe8me".encode("latin-1"))
    _write(tmp_path / "utf16.md", "hello".encode("utf-16-le"))
    _write(tmp_path / "ok.txt", "fine")
    items = _load(tmp_path)
    assert _skips(items) == {"latin.txt": "not UTF-8 text", "utf16.md": "not UTF-8 text"}
    assert [d.id for d in _docs(items)] == ["ok.txt"]


def test_empty_documents_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "blank.txt", "  \n\t\n")
    _write(tmp_path / "only-front.md", "---\ntitle: x\n---\n\n")
    _write(tmp_path / "hidden.html", "<html><body><div hidden>secret</div></body></html>")
    assert _skips(_load(tmp_path)) == {
        "blank.txt": "empty document",
        "only-front.md": "empty document",
        "hidden.html": "empty document",
    }


# --------------------------------------------------------------------------- html

_PAGE = """<!DOCTYPE html>
<html><head><title> The  Page </title><style>body { color: red }</style>
<script>var inHead = 1;</script></head>
<body>
<!-- a comment that must not appear -->
<h1>Main heading</h1>
<p>First   paragraph
   spans lines.<br>After break.</p>
<script>alert("script text")</script>
<noscript>noscript text</noscript>
<template><p>template text</p></template>
<div hidden>hidden attribute text</div>
<div style="DISPLAY : none ;">display none text</div>
<span style="color:red; visibility: hidden">visibility text</span>
<p aria-hidden="true">aria hidden text</p>
<input type="hidden" value="token-value">
<svg><title>svg title</title><text>svg text</text></svg>
<iframe src="x">iframe text</iframe>
<h2>Section <em>two</em></h2>
<ul><li>apple</li><li>banana <b>split</b></li></ul>
<table><tr><th>Name</th><th>Qty</th></tr><tr><td>pear</td><td>3</td></tr></table>
<h3>Code</h3>
<pre>def f():
    return 1</pre>
<p style="display:block">Visible styled text.</p>
</body></html>
"""


def test_html_text_headings_and_hidden_content(tmp_path: Path) -> None:
    _write(tmp_path / "page.html", _PAGE)
    [doc] = _load(tmp_path)
    assert isinstance(doc, Document)
    assert doc.format == "html"
    assert doc.title == "The Page"
    assert doc.text == (
        "# Main heading\n\n"
        "First paragraph spans lines.\n"
        "After break.\n\n"
        "## Section two\n\n"
        "- apple\n"
        "- banana split\n\n"
        "Name | Qty\n"
        "pear | 3\n\n"
        "### Code\n\n"
        "def f():\n"
        "    return 1\n\n"
        "Visible styled text."
    )
    for hidden in (
        "comment",
        "script text",
        "inHead",
        "color: red",
        "noscript",
        "template",
        "hidden attribute",
        "display none",
        "visibility text",
        "aria hidden",
        "token-value",
        "svg",
        "iframe",
    ):
        assert hidden not in doc.text


def test_html_title_falls_back_to_first_visible_h1(tmp_path: Path) -> None:
    _write(
        tmp_path / "x.htm",
        "<html><body><h1 hidden>Ghost</h1><div><h1>Shown <i>title</i></h1>text</div></body></html>",
    )
    [doc] = _docs(_load(tmp_path))
    assert doc.title == "Shown title"
    assert doc.text == "# Shown title\n\ntext"


def test_html_with_declared_non_utf8_charset(tmp_path: Path) -> None:
    html = '<html><head><meta charset="iso-8859-1"></head><body><p>café</p></body></html>'
    _write(tmp_path / "old.html", html.encode("latin-1"))
    [doc] = _docs(_load(tmp_path))
    assert doc.text == "café"
    assert doc.title == "old"


# --------------------------------------------------------------------------- pdf


def test_pdf_pages_text_offsets_and_title(tmp_path: Path) -> None:
    _write(
        tmp_path / "manual.pdf",
        _pdf([["Hello page one", "second line"], ["Goodbye (page) two"]], title="The Manual"),
    )
    [doc] = _load(tmp_path)
    assert isinstance(doc, Document)
    assert doc.format == "pdf"
    assert doc.id == "manual.pdf"
    assert doc.title == "The Manual"
    assert len(doc.pages) == 2
    assert doc.pages[0] == 0
    first = doc.text[doc.pages[0] : doc.pages[1]]
    second = doc.text[doc.pages[1] :]
    assert "Hello page one" in first and "second line" in first
    assert "Goodbye (page) two" not in first
    assert second.startswith("Goodbye (page) two")
    assert doc.text[doc.pages[1] - 2 : doc.pages[1]] == "\n\n"


def test_pdf_title_defaults_to_stem(tmp_path: Path) -> None:
    _write(tmp_path / "report.pdf", _pdf([["Some words"]]))
    [doc] = _docs(_load(tmp_path))
    assert doc.title == "report"
    assert doc.pages == (0,)


def test_pdf_without_text_corrupt_and_encrypted_are_skipped(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    blank = PdfWriter()
    blank.add_blank_page(width=200, height=200)
    buf = io.BytesIO()
    blank.write(buf)
    _write(tmp_path / "scan.pdf", buf.getvalue())
    _write(tmp_path / "broken.pdf", b"%PDF-1.4\nthis is not a pdf at all\n")

    locked = PdfWriter()
    for page in PdfReader(io.BytesIO(_pdf([["Top secret"]]))).pages:
        locked.add_page(page)
    locked.encrypt(user_password="pw", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    locked.write(buf)
    _write(tmp_path / "locked.pdf", buf.getvalue())

    items = _load(tmp_path)
    skips = _skips(items)
    assert skips["scan.pdf"] == "no extractable text (scanned PDF?)"
    assert skips["locked.pdf"] == "encrypted PDF (needs a password)"
    assert skips["broken.pdf"]  # a short reason, and no exception
    assert _docs(items) == []


def test_pdf_encrypted_with_empty_user_password_loads(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(_pdf([["Readable text"]]))).pages:
        writer.add_page(page)
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    _write(tmp_path / "open.pdf", buf.getvalue())
    [doc] = _load(tmp_path)
    assert isinstance(doc, Document)
    assert "Readable text" in doc.text


# --------------------------------------------------------------------------- jsonl


def test_jsonl_beir_corpus_with_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"_id": "d1", "title": "First", "text": "alpha", "metadata": {"url": "u"}}),
        "",
        json.dumps({"id": 42, "text": "beta\r\nline"}),
        "{not json",
        json.dumps({"title": "no id", "text": "x"}),
        json.dumps({"_id": "d3", "title": "no text"}),
        json.dumps({"_id": "d1", "text": "duplicate"}),
        json.dumps(["a", "list"]),
        json.dumps({"_id": "d4", "text": 5}),
        json.dumps(
            {"_id": "d5", "text": "gamma", "metadata": {"year": 2020, "ok": True, "tags": ["x"]}}
        ),
        "   ",
    ]
    _write(tmp_path / "corpus" / "corpus.jsonl", "\n".join(lines) + "\n")
    items = _load(tmp_path)
    docs = _docs(items)
    assert [d.id for d in docs] == ["d1", "42", "d5"]
    assert all(d.source == "corpus/corpus.jsonl" and d.format == "jsonl" for d in docs)
    assert docs[0].title == "First"
    assert docs[0].metadata == {"url": "u"}
    assert docs[1].text == "beta\nline"
    assert docs[1].title == ""
    assert docs[2].metadata == {"year": 2020, "ok": True}
    skips = _skips(items)
    assert set(skips) == {
        "corpus/corpus.jsonl:4",
        "corpus/corpus.jsonl:5",
        "corpus/corpus.jsonl:6",
        "corpus/corpus.jsonl:7",
        "corpus/corpus.jsonl:8",
        "corpus/corpus.jsonl:9",
    }
    assert skips["corpus/corpus.jsonl:4"].startswith("invalid JSON")
    assert "id" in skips["corpus/corpus.jsonl:5"]
    assert "text" in skips["corpus/corpus.jsonl:6"]
    assert skips["corpus/corpus.jsonl:7"] == "duplicate id 'd1'"
    assert skips["corpus/corpus.jsonl:8"] == "not a JSON object"
    assert "text" in skips["corpus/corpus.jsonl:9"]
    # the order in which records are yielded follows the file
    order = [i.id if isinstance(i, Document) else i.source for i in items]
    assert order.index("42") < order.index("corpus/corpus.jsonl:4") < order.index("d5")


def test_jsonl_metadata_does_not_depend_on_line_number(tmp_path: Path) -> None:
    record = json.dumps({"_id": "a", "text": "same"})
    _write(tmp_path / "one.jsonl", record + "\n")
    _write(tmp_path / "two.jsonl", "\n\n" + record + "\n")
    one, two = _docs(_load(tmp_path))
    assert one.hash == two.hash
    assert one.metadata == {}


def test_jsonl_long_line_is_skipped_and_the_rest_loads(tmp_path: Path) -> None:
    long = json.dumps({"_id": "big", "text": "x" * 500})
    short = json.dumps({"_id": "small", "text": "y"})
    _write(tmp_path / "c.jsonl", f"{long}\n{short}\n")
    items = _load(tmp_path, max_bytes=100)
    assert [d.id for d in _docs(items)] == ["small"]
    assert _skips(items) == {"c.jsonl:1": "line is larger than 100 bytes"}


def test_jsonl_without_records_is_reported(tmp_path: Path) -> None:
    _write(tmp_path / "empty.jsonl", "\n\n")
    assert _skips(_load(tmp_path)) == {"empty.jsonl": "no records"}


# --------------------------------------------------------------------------- globs


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("**/*.md", "a.md", True),
        ("**/*.md", "x/y/a.md", True),
        ("**/*.md", "x/a.txt", False),
        ("*.md", "a.md", True),
        ("*.md", "x/a.md", False),
        ("drafts/**", "drafts", True),
        ("drafts/**", "drafts/a.md", True),
        ("drafts/**", "drafts/x/y/a.md", True),
        ("drafts/**", "draftsx/a.md", False),
        ("drafts/**", "docs/drafts/a.md", False),
        ("**/drafts/**", "docs/drafts/a.md", True),
        ("docs/**/api/*.md", "docs/api/a.md", True),
        ("docs/**/api/*.md", "docs/v1/v2/api/a.md", True),
        ("docs/**/api/*.md", "docs/v1/api/sub/a.md", False),
        ("docs/*/a.md", "docs/x/y/a.md", False),
        ("doc?.md", "doc1.md", True),
        ("doc?.md", "doc/.md", False),
        ("[ab].txt", "a.txt", True),
        ("[!ab].txt", "c.txt", True),
        ("[!ab].txt", "a.txt", False),
        ("./notes/*.txt", "notes/n.txt", True),
        ("notes/", "notes", True),
        ("a+b(1).md", "a+b(1).md", True),
        ("**", "any/thing.md", True),
        ("", "a.md", False),
    ],
)
def test_glob_matching(pattern: str, path: str, expected: bool) -> None:
    from pathlib import PurePosixPath

    assert loaders._matches_any(PurePosixPath(path), [pattern]) is expected


def _tree(root: Path) -> None:
    _write(root / "a.md", "# A\n")
    _write(root / "b.txt", "b")
    _write(root / "docs" / "c.md", "c")
    _write(root / "docs" / "deep" / "d.md", "d")
    _write(root / "drafts" / "e.md", "e")
    _write(root / "drafts" / "sub" / "f.md", "f")


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    _tree(tmp_path)
    items = _load(tmp_path, include=["**/*.md"], exclude=["drafts/**"])
    assert [i.source for i in items] == ["a.md", "docs/c.md", "docs/deep/d.md"]
    items = _load(tmp_path, exclude=["drafts", "**/deep/**"])
    assert [i.source for i in items] == ["a.md", "b.txt", "docs/c.md"]
    items = _load(tmp_path, include=["docs/*.md"])
    assert [i.source for i in items] == ["docs/c.md"]


def test_named_files_ignore_include_but_obey_exclude(tmp_path: Path) -> None:
    _tree(tmp_path)
    items = _load(tmp_path, "b.txt", "drafts/e.md", "docs", include=["**/*.md"], exclude=["drafts"])
    assert [i.source for i in items] == ["b.txt", "docs/c.md", "docs/deep/d.md"]
    assert _load(tmp_path, "drafts", exclude=["drafts/**"]) == []


# --------------------------------------------------------------------------- paths and walking


def test_path_outside_root_raises_before_anything_is_yielded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _write(root / "a.md", "a")
    _write(tmp_path / "outside.md", "secret")
    with pytest.raises(UsageError, match="path outside the ingest root"):
        iter_documents(["a.md", tmp_path / "outside.md"], root=root)
    with pytest.raises(UsageError, match="path outside the ingest root"):
        iter_documents(["a.md", "../outside.md"], root=root)
    with pytest.raises(UsageError, match=r"no such file or directory: nope\.md"):
        iter_documents(["a.md", "nope.md"], root=root)


def test_named_symlink_leaving_root_raises(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _write(tmp_path / "secret.md", "secret")
    (root / "link.md").symlink_to(tmp_path / "secret.md")
    with pytest.raises(UsageError, match="outside the ingest root"):
        iter_documents(["link.md"], root=root)


def test_relative_paths_resolve_against_root_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    _write(root / "docs" / "a.md", "in root")
    elsewhere = tmp_path / "elsewhere"
    _write(elsewhere / "docs" / "a.md", "in cwd")
    monkeypatch.chdir(elsewhere)
    [doc] = _docs(_load(root, "docs/a.md"))
    assert doc.text == "in root"
    assert doc.id == "docs/a.md"
    [doc] = _docs(_load(root, root / "docs" / "a.md"))
    assert doc.id == "docs/a.md"


def test_symlinks_leading_outside_root_are_skipped_and_not_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _write(root / "ok.md", "fine")
    outside = tmp_path / "outside"
    _write(outside / "secret.md", "TOP SECRET")
    (root / "file-link.md").symlink_to(outside / "secret.md")
    (root / "dir-link").symlink_to(outside, target_is_directory=True)
    (root / "dangling.md").symlink_to(root / "missing.md")
    items = _load(root)
    assert _skips(items) == {
        "dangling.md": "broken symlink",
        "dir-link": "symlink leads outside the ingest root",
        "file-link.md": "symlink leads outside the ingest root",
    }
    assert [d.id for d in _docs(items)] == ["ok.md"]
    assert all("SECRET" not in d.text for d in _docs(items))


def test_symlink_inside_root_is_followed_and_cycles_stop(tmp_path: Path) -> None:
    _write(tmp_path / "docs" / "a.md", "a")
    (tmp_path / "docs" / "loop").symlink_to(tmp_path / "docs", target_is_directory=True)
    (tmp_path / "alias").symlink_to(tmp_path / "docs", target_is_directory=True)
    (tmp_path / "a-link.md").symlink_to(tmp_path / "docs" / "a.md")
    items = _load(tmp_path)
    assert [d.id for d in _docs(items)] == ["a-link.md", "alias/a.md", "docs/a.md"]
    assert _skips(items) == {"alias/loop": "symlink cycle", "docs/loop": "symlink cycle"}


def test_hidden_entries_skipped_and_order_deterministic(tmp_path: Path) -> None:
    for name in ["z.md", "B.md", "a.txt", "sub/y.md", "sub/x.md", "a-b/c.md", "a_b/c.md"]:
        _write(tmp_path / name, name)
    _write(tmp_path / ".keel" / "state.md", "internal")
    _write(tmp_path / ".git" / "HEAD.txt", "ref")
    _write(tmp_path / "sub" / ".hidden.md", "hidden")
    first = [i.source for i in _load(tmp_path)]
    assert first == [
        "B.md",
        "a-b/c.md",
        "a.txt",
        "a_b/c.md",
        "sub/x.md",
        "sub/y.md",
        "z.md",
    ]
    assert [i.source for i in _load(tmp_path)] == first
    docs = _docs(_load(tmp_path))
    assert all(d.id == d.source and "\\" not in d.id for d in docs)


def test_overlapping_paths_load_each_file_once(tmp_path: Path) -> None:
    _tree(tmp_path)
    items = _load(tmp_path, "docs/c.md", "docs", ".")
    sources = [i.source for i in items]
    assert len(sources) == len(set(sources))
    assert sources[:3] == ["docs/c.md", "docs/deep/d.md", "a.md"]


def test_unsupported_and_oversize_files_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "data.xyz", "x")
    _write(tmp_path / "Makefile", "all:")
    _write(tmp_path / "big.md", "x" * 2000)
    _write(tmp_path / "small.md", "x" * 10)
    items = _load(tmp_path, max_bytes=1024)
    assert _skips(items) == {
        "Makefile": "unsupported file type (no extension)",
        "big.md": "file is larger than 1 KB",
        "data.xyz": "unsupported file type '.xyz'",
    }
    assert [d.id for d in _docs(items)] == ["small.md"]
    assert _skips(_load(tmp_path, "data.xyz")) == {"data.xyz": "unsupported file type '.xyz'"}
    big = _load(tmp_path, "big.md", max_bytes=20 * 1024 * 1024)
    assert [d.id for d in _docs(big)] == ["big.md"]


def test_oversize_reason_in_megabytes(tmp_path: Path) -> None:
    _write(tmp_path / "big.txt", b"x" * (1024 * 1024 + 1))
    assert _skips(_load(tmp_path, max_bytes=1024 * 1024)) == {"big.txt": "file is larger than 1 MB"}


def test_unreadable_file_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "a.md", "a")
    _write(tmp_path / "locked.md", "b")
    real_open = open

    def fake_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file).endswith("locked.md"):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(loaders, "open", fake_open, raising=False)
    items = _load(tmp_path)
    assert _skips(items) == {"locked.md": "cannot read: Permission denied"}
    assert [d.id for d in _docs(items)] == ["a.md"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_are_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.txt")
    _write(tmp_path / "a.txt", "a")
    items = _load(tmp_path)
    assert _skips(items) == {"pipe.txt": "not a regular file"}


def test_import_is_cheap() -> None:
    code = (
        "import sys, keel.rag.loaders\n"
        "heavy = [m for m in ('bs4', 'pypdf', 'yaml', 'lxml') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
