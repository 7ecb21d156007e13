"""Keel's LangGraph checkpoint savers: the SQLite and PostgreSQL savers with async methods.

LangGraph's ``SqliteSaver`` and ``PostgresSaver`` are synchronous: their ``aget_tuple``,
``aput`` ... raise ``NotImplementedError``, so a graph with one cannot run ``ainvoke`` or
``astream``. :class:`KeelSqliteSaver` and :class:`KeelPostgresSaver` add the async methods
(:class:`AsyncInThreads`): each runs the saver's own synchronous method in a worker thread
(``asyncio.to_thread``), so both paths read and write the same rows through one
implementation, and the event loop never waits on the database.

Why threads rather than ``aiosqlite`` or psycopg's ``AsyncConnection``: an app's checkpointer
is opened once and outlives any one event loop (the sync gateway, ``App.ask`` from scripts,
``App.aask`` from one or several loops share it), while an async connection or pool is bound
to the loop that opened it. The thread hop costs tens of microseconds against a checkpoint
write's hundreds (``benchmarks/agent_overhead.py --async``). The sync methods are thread-safe:
the SQLite saver serialises its one connection with a lock, the PostgreSQL one takes a
connection from its pool per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver

__all__ = ["AsyncInThreads", "KeelPostgresSaver", "KeelSqliteSaver"]


class AsyncInThreads(BaseCheckpointSaver[str]):
    """The async methods of a checkpoint saver as its sync methods run in a worker thread
    (a mixin: put it before the synchronous saver's class)."""

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        def read() -> list[CheckpointTuple]:  # read whole: a cursor stays in its thread
            return list(self.list(config, filter=filter, before=before, limit=limit))

        for item in await asyncio.to_thread(read):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, Any]:
        return await asyncio.to_thread(
            lambda: self.get_delta_channel_history(config=config, channels=channels)
        )


class KeelSqliteSaver(AsyncInThreads, SqliteSaver):
    """``SqliteSaver`` with async methods (:class:`AsyncInThreads`)."""


class KeelPostgresSaver(AsyncInThreads, PostgresSaver):
    """``PostgresSaver`` with async methods (:class:`AsyncInThreads`)."""
