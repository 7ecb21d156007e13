"""Talking to the app: ``keel ask``, ``keel resume`` and ``keel chat``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from keel.errors import UsageError

from ._common import _app, _errors, _print_json, _scopes, err, out


def _print_answer(answer: Any) -> None:
    if answer.pending_approval:
        out.print("[yellow]Waiting for approval:[/yellow]")
        for call in answer.pending_approval:
            out.print(
                f"  {call['name']}({json.dumps(call['args'])})  call {call['id']}", markup=False
            )
        out.print(f"Resume with: keel resume {answer.thread_id} --approve (or --reject)")
        return
    out.print(answer.text, markup=False)
    for c in answer.citations:
        where = " › ".join(c["headings"]) if c["headings"] else c["title"]
        out.print(f"  [{c['n']}] {c['source']}  {where}", markup=False, style="dim")
    for t in answer.tool_calls:
        out.print(f"  tool {t['name']} → {t['status']}", markup=False, style="dim")


def ask(
    question: Annotated[str, typer.Argument(help="The question or message.")],
    thread: Annotated[str | None, typer.Option(help="Continue this thread (default: new).")] = None,
    scopes: Annotated[
        str | None, typer.Option(help="Comma-separated scopes the caller holds (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Ask the app one question (a turn in a thread), with citations."""
    with _errors():
        app = _app()
        answer = app.ask(question, thread_id=thread, scopes=_scopes(scopes))
        app.close()
    if as_json:
        _print_json(answer.to_dict())
        return
    _print_answer(answer)
    err.print(f"thread {answer.thread_id}", style="dim")


def resume(
    thread: Annotated[str, typer.Argument(help="The thread waiting for approval.")],
    approve: Annotated[bool, typer.Option("--approve", help="Approve every pending call.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject every pending call.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Approve or reject the tool calls a thread is waiting on, and continue it."""
    with _errors():
        if approve == reject:
            raise UsageError("give exactly one of --approve or --reject")
        app = _app()
        answer = app.resume(thread, "approve" if approve else "reject")
        app.close()
    if as_json:
        _print_json(answer.to_dict())
        return
    _print_answer(answer)


def chat(
    thread: Annotated[str | None, typer.Option(help="Continue this thread (default: new).")] = None,
    scopes: Annotated[
        str | None, typer.Option(help="Comma-separated scopes the caller holds (default: all).")
    ] = None,
) -> None:
    """Chat in the terminal: answers stream; risky tool calls ask for your approval."""
    with _errors():
        app = _app()
        held = _scopes(scopes)
        err.print(f"Chatting with {app.name} (empty line or Ctrl-D to quit).", style="dim")
        while True:
            try:
                question = input("you> ").strip()
            except EOFError:
                break
            if not question:
                break
            out.print("bot> ", end="")
            answer: dict[str, Any] = {}
            for event in app.stream(question, thread_id=thread, scopes=held):
                if event["type"] == "token":
                    out.print(event["text"], end="", markup=False)
                elif event["type"] == "done":
                    answer = event["answer"]
            out.print()
            thread = answer.get("thread_id", thread)
            while answer.get("pending_approval"):
                decisions: dict[str, Any] = {}
                for call in answer["pending_approval"]:
                    prompt = f"approve {call['name']}({json.dumps(call['args'])})? [y/N] "
                    try:
                        reply = input(prompt).strip().lower()
                    except EOFError:
                        reply = ""
                    decisions[call["id"]] = "approve" if reply in ("y", "yes") else "reject"
                assert thread is not None
                result = app.resume(thread, decisions, scopes=held)
                out.print(f"bot> {result.text}", markup=False)
                answer = result.to_dict()
        app.close()
