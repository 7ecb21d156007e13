"""``keel keys``: API keys for the gateway."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keel.errors import UsageError

from ._common import _app, _audit, _errors, _print_json, err, out

keys_cli = typer.Typer(help="API keys for the gateway.", no_args_is_help=True)


def _key_store() -> Any:
    from keel.api.keys import KeyStore

    return KeyStore(_app().engine)


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: chat, ingest, feedback, traces:read, admin.")
    ] = "chat",
    replace: Annotated[
        bool, typer.Option(help="Revoke the active keys with the same name first.")
    ] = False,
    labels: Annotated[
        str,
        typer.Option(
            help="Comma-separated access labels the key reads (e.g. staff,tenant-a): documents "
            "with any of them, and unlabelled ones. Admin keys read everything."
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Create a key. It is shown once: store it now."""
    with _errors():
        from keel.api.keys import parse_scopes
        from keel.rag.access import parse_labels

        parse_scopes(scopes), parse_labels(labels)  # refused before anything is revoked
        store = _key_store()
        if replace:
            for old in store.list():
                if old.name == name and old.revoked_at is None:
                    store.revoke(old.id)
                    _audit("key.revoked", old.id, {"name": old.name, "replaced": True})
        plain, key = store.create(name, scopes, labels)
        _audit(
            "key.created",
            key.id,
            {"name": key.name, "scopes": sorted(key.scopes), "labels": sorted(key.labels)},
        )
    if as_json:
        _print_json({"key": plain, **key.to_dict()})
        return
    out.print(plain, markup=False)
    reads = f"; reads {', '.join(sorted(key.labels))}" if key.labels else ""
    err.print(f"key {key.id} ({', '.join(sorted(key.scopes))}{reads}): shown once, store it now")


@keys_cli.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Keys (never their secrets)."""
    with _errors():
        keys = _key_store().list()
    if as_json:
        _print_json([k.to_dict() for k in keys])
        return
    for k in keys:
        state = "revoked" if k.revoked_at else "active"
        reads = f"  labels={','.join(sorted(k.labels))}" if k.labels else ""
        out.print(f"{k.id}  {k.name}  {','.join(sorted(k.scopes))}  {state}{reads}", markup=False)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    """Revoke a key: it stops working at once."""
    with _errors():
        if not _key_store().revoke(key_id):
            raise UsageError(f"no active key {key_id!r}")
        _audit("key.revoked", key_id)
    err.print(f"revoked {key_id}")
