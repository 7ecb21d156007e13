from __future__ import annotations

import pytest

from keel.errors import ConfigError
from keel.rag.chunking import Chunker, markdown_sections
from keel.rag.types import Document

MD = """# Guide

Intro paragraph.

## Install

Run the installer.

```bash
# this is a comment, not a heading
pip install thing
```

### On Windows

Use the MSI package.

## Usage

""" + ("Every sentence here is part of a long section about usage. " * 40)


def doc(text: str = MD, fmt: str = "markdown", **kw: object) -> Document:
    return Document(
        id="docs/guide.md", text=text, source="docs/guide.md", title="Guide", format=fmt, **kw
    )  # type: ignore[arg-type]


def test_markdown_sections_follow_heading_path_and_ignore_fenced_code() -> None:
    heads = [s.headings for s in markdown_sections(MD)]
    assert heads == [
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "On Windows"),
        ("Guide", "Usage"),
    ]


def test_chunks_carry_exact_offsets_headings_and_stay_within_sections() -> None:
    chunks = Chunker(400, 60).split(doc())
    assert chunks, "a document yields chunks"
    for c in chunks:
        assert MD[c.start : c.end] == c.text
        assert len(c.text) <= 400
        assert c.doc_id == "docs/guide.md" and c.source == "docs/guide.md"
    by_text = {c.text.split("\n")[0]: c for c in chunks}
    assert by_text["Use the MSI package."].headings == ("Guide", "Install", "On Windows")
    assert "# this is a comment" in by_text["Run the installer."].text
    usage = [c for c in chunks if c.headings == ("Guide", "Usage")]
    assert len(usage) > 3
    # consecutive chunks of a long section overlap
    assert usage[1].start < usage[0].end


def test_heading_lines_are_not_chunks_but_are_indexed_with_the_chunk() -> None:
    chunks = Chunker(400, 60).split(doc())
    assert all(not c.text.startswith("#") for c in chunks)
    first = chunks[0]
    assert first.embedding_text() == "Guide\nIntro paragraph."  # title == heading, not repeated


def test_chunk_ids_are_stable_and_content_derived() -> None:
    a = Chunker(400, 60).split(doc())
    b = Chunker(400, 60).split(doc())
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == len(a)
    changed = Chunker(400, 60).split(doc(MD.replace("Use the MSI package.", "Use winget.")))
    same = {c.id for c in a} & {c.id for c in changed}
    assert len(same) == len(a) - 1  # only the edited chunk got a new id
    other_doc = Chunker(400, 60).split(
        Document(
            id="docs/other.md", text=MD, source="docs/other.md", title="Guide", format="markdown"
        )
    )
    assert not ({c.id for c in a} & {c.id for c in other_doc})


def test_repeated_identical_passages_get_distinct_ids() -> None:
    text = "Same line.\n\nOther.\n\nSame line."
    chunks = Chunker(12, 0).split(doc(text, fmt="text"))
    same = [c for c in chunks if c.text == "Same line."]
    assert len(same) == 2 and same[0].id != same[1].id


def test_plain_text_is_not_cut_at_hash_lines_and_pdf_chunks_know_their_page() -> None:
    text = "# not a heading in plain text\n\n" + "Page one text. " * 30 + "\n\n" + "Page two. " * 30
    page2 = text.index("Page two.")
    chunks = Chunker(200, 0).split(doc(text, fmt="pdf", pages=(0, page2)))
    assert chunks[0].headings == ()
    assert chunks[0].page == 1
    assert chunks[-1].page == 2


def test_overlap_must_be_smaller_than_size() -> None:
    with pytest.raises(ConfigError):
        Chunker(100, 100)
