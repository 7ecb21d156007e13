"""``keel cache``: the semantic cache."""

from __future__ import annotations

from typing import Annotated

import typer

from keel.errors import UsageError

from ._common import _app, _audit, _errors, _print_json, err, out

cache_cli = typer.Typer(help="The semantic cache ([cache] in keel.toml).", no_args_is_help=True)


@cache_cli.command("stats")
def cache_stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Cached answers by partition (release, index version, API key)."""
    with _errors():
        app = _app()
        stats = {"enabled": app.config.cache.enabled, **app.cache.stats()}
        app.close()
    if as_json:
        _print_json(stats)
        return
    state_ = "on" if stats["enabled"] else "off"
    out.print(
        f"cache {state_}: {stats['entries']} entries, threshold {stats['threshold']}, "
        f"ttl {stats['ttl_s']:g} s, at most {stats['max_entries']} per partition",
        markup=False,
    )
    for p in stats["partitions"]:
        out.print(
            f"{p['release']}  index={p['index_version']}  key={p['key_id'] or '-'}  "
            f"{p['entries']} entries  newest {p['newest'][:19]}",
            markup=False,
        )


@cache_cli.command("clear")
def cache_clear(
    key: Annotated[str | None, typer.Option(help="Only this API key's entries.")] = None,
    expired: Annotated[bool, typer.Option(help="Only entries past ttl_s.")] = False,
) -> None:
    """Delete cached answers (all of this app's, one key's, or the expired ones)."""
    with _errors():
        if key is not None and expired:
            raise UsageError("give --key or --expired, not both")
        app = _app()
        gone = app.cache.purge_expired() if expired else app.cache.clear(key)
        if not expired:
            _audit("cache.cleared", key or "all", {"entries": gone})
        app.close()
    err.print(f"deleted {gone} cached answer(s)")
