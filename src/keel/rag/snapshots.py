"""Index snapshots: a release keeps the collection it was evaluated on.

A snapshot is a copy of a collection at one index version, in a collection of its own named
``<collection>.snap-<index version>`` (vectors copied, nothing embedded again), with its
manifest; BM25 is rebuilt from it on first use. Chroma has no copy-on-write, so a snapshot
costs the collection's size once per distinct index version a release pins; `keel release gc`
deletes the snapshots no release references. The same code serves embedded and server Chroma.
"""

from __future__ import annotations

__all__ = ["SNAPSHOT_MARK", "is_snapshot", "snapshot_name", "snapshot_of"]

SNAPSHOT_MARK = ".snap-"


def snapshot_name(collection: str, index_version: str) -> str:
    """The snapshot of ``collection`` at ``index_version``."""
    return f"{collection}{SNAPSHOT_MARK}{index_version}"


def is_snapshot(name: str) -> bool:
    return SNAPSHOT_MARK in name


def snapshot_of(name: str) -> str:
    """The collection a snapshot copies."""
    return name.split(SNAPSHOT_MARK, 1)[0]
