"""The ``keel`` command line (typer + rich): thin commands over the library.

Exit codes: 0 ok, 1 a check failed or a backend failed, 2 usage or configuration error.
``--json`` prints machine-readable output on stdout; messages and progress go to stderr.

Each command group lives in its own module; the commands are registered here, in the order
``keel --help`` lists them.
"""

from __future__ import annotations

from . import (
    audit,
    cache,
    conversation,
    db,
    evals,
    feedback,
    guard,
    keys,
    knowledge,
    monitor,
    privacy,
    project,
    release,
    serve,
    threads,
    tools,
    traces,
    tune,
)
from ._common import cli

for command, name in (
    (project.init, None),
    (knowledge.ingest, None),
    (knowledge.search, None),
    (conversation.ask, None),
    (conversation.resume, None),
    (conversation.chat, None),
    (serve.serve, None),
    (serve.worker, None),
    (evals.eval_suite, "eval"),
    (evals.compare, "compare"),
    (threads.prune, "prune"),
    (project.version, None),
):
    cli.command(name)(command)

for group, name in (
    (tools.tools_cli, "tools"),
    (db.db_cli, "db"),
    (keys.keys_cli, "keys"),
    (release.release_cli, "release"),
    (monitor.monitor_cli, "monitor"),
    (evals.evals_cli, "evals"),
    (threads.threads_cli, "threads"),
    (cache.cache_cli, "cache"),
    (audit.audit_cli, "audit"),
    (traces.traces_cli, "traces"),
    (feedback.feedback_cli, "feedback"),
    (guard.guard_cli, "guard"),
    (privacy.privacy_cli, "privacy"),
    (tune.tune_cli, "tune"),
):
    cli.add_typer(group, name=name)


def main() -> None:
    cli()


__all__ = ["cli", "main"]
