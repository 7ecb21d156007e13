"""Splitting text into sentences, for the extractive model and the grounding guard.

Prose is split after ``.!?`` (not after abbreviations such as "e.g." or inside decimals);
every bullet item or line of a list is its own sentence; hard-wrapped prose lines are joined;
markdown headings and table rules are dropped; a table row reads with its column names.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "etc", "vs", "cf", "al", "approx", "incl", "min", "max", "no", "nr", "fig"}
    | {"figs", "eq", "dept", "est", "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "inc"}
    | {"ltd", "co", "corp", "a.m", "p.m", "u.s", "u.k"}
)
_BULLET = re.compile(r"^(?:[-*+•‣◦▪]|\d{1,3}[.)]|\(?[a-z]\))\s+")
_HEADING = re.compile(r"^#{1,6}\s")
_TABLE_RULE = re.compile(r"^\|?[\s:|-]+\|?$")
_BOUNDARY = re.compile(r"([.!?…][\"'”’)\]]*)\s+(?=[\"'“‘(\[]?[A-Z0-9À-Ý])")
_MIN_WORDS = 3


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage: prose is split after ``.!?`` (not after abbreviations such as
    "e.g." or inside decimals), every bullet item or line of a list is its own sentence,
    hard-wrapped prose lines are joined, markdown headings and table rules are dropped."""
    blocks: list[str] = []
    current = ""
    lines = [raw.strip() for raw in text.splitlines()]
    header: list[str] | None = None  # the cells of the current table's header row
    for i, line in enumerate(lines):
        is_rule = bool(_TABLE_RULE.match(line)) and "-" in line
        row = line.startswith("|")
        if row and not is_rule and i + 1 < len(lines):
            after = lines[i + 1]
            if _TABLE_RULE.match(after) and "-" in after:
                header = _cells(line)  # a header row is not a sentence: it names the columns
                continue
        if not row:
            header = None
        if not line or _HEADING.match(line) or is_rule:
            if current:
                blocks.append(current)
            current = ""
            continue
        if row and header:
            # "| Monthly | 7 days |" under "| Plan | Refund window |" reads as
            # "Plan: Monthly; Refund window: 7 days."
            cells = _cells(line)
            pairs = [f"{h}: {c}" if h else c for h, c in zip(header, cells, strict=False) if c]
            line = "| " + "; ".join(pairs) + " |"
        line = line.strip("|").strip()
        bullet = _BULLET.match(line)
        if row or bullet:
            if current:
                blocks.append(current)
            current = line[bullet.end() :] if bullet else line
            if row:  # a table row is a sentence of its own
                blocks.append(current)
                current = ""
            continue
        wrapped = (
            current
            and not current.endswith((".", "!", "?", ":", ";", "…"))
            and (line[0].islower() or len(current.split()) > 8)
        )
        if wrapped:
            current = f"{current} {line}"
        else:
            if current:
                blocks.append(current)
            current = line
    if current:
        blocks.append(current)

    sentences: list[str] = []
    for block in blocks:
        pieces: list[str] = []
        start = 0
        for match in _BOUNDARY.finditer(block):
            piece = block[start : match.end(1)].strip()
            start = match.end()
            if pieces and _ends_with_abbreviation(pieces[-1]):
                pieces[-1] = f"{pieces[-1]} {piece}"
            else:
                pieces.append(piece)
        tail = block[start:].strip()
        if pieces and _ends_with_abbreviation(pieces[-1]):
            pieces[-1] = f"{pieces[-1]} {tail}".strip()
        elif tail:
            pieces.append(tail)
        sentences.extend(p for p in pieces if _is_sentence(p))
    return sentences


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _ends_with_abbreviation(piece: str) -> bool:
    words = piece.split()
    return bool(words) and words[-1].lower().rstrip(".") in _ABBREVIATIONS


def _is_sentence(piece: str) -> bool:
    return len(re.findall(r"\w+", piece)) >= _MIN_WORDS


# -- reading arguments from a question -------------------------------------------------------
