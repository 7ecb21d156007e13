"""``keel serve``: the HTTP gateway."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import _app, _config_path, _errors, err


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    ui: Annotated[
        bool, typer.Option("--ui", help="Serve the web console at /ui (as [ui] enabled).")
    ] = False,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="Run ingestion jobs in this process (default: KEEL_EMBEDDED_WORKER, true); "
            "--no-worker when `keel worker` processes run them.",
        ),
    ] = None,
) -> None:
    """Serve the app over HTTP: native and OpenAI-compatible chat, with API keys and limits,
    and the web console at /ui when enabled."""
    import os

    import uvicorn

    with _errors():
        config = _config_path().resolve()
        app = _app()
        app.agent  # noqa: B018 - fail now, with exit 2, on a bad model or tool config
        app.warm()  # the guards' and attribution's models load now, not in the first request
        console = ui or app.config.ui.enabled or app.settings.ui
        embedded = app.settings.embedded_worker if worker is None else worker
        err.print(f"Keel gateway for {app.name} on http://{host}:{port} (docs at /docs)")
        if console:
            err.print(f"Web console at http://{host}:{port}/ui (sign in with an API key)")
        if workers == 1:
            from keel.api.server import create_app

            api = create_app(app, ui=console)
            if embedded:
                api.state.gateway.queue.run_embedded()
            else:
                app.settings.embedded_worker = False
            uvicorn.run(api, host=host, port=port, log_level="warning")
        else:
            os.environ["KEEL_CONFIG"] = str(config)  # each worker builds the same app
            if ui:
                os.environ["KEEL_UI"] = "1"
            os.environ["KEEL_EMBEDDED_WORKER"] = "true" if embedded else "false"
            uvicorn.run(
                "keel.api.server:from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
            )


def worker(
    threads: Annotated[int, typer.Option(min=1, max=64, help="Jobs run at once.")] = 1,
) -> None:
    """Run the app's ingestion jobs from its task queue (Redis, the PostgreSQL keel database,
    or SQLite beside it), until stopped (Ctrl-C lets running jobs finish). Serve the gateway
    with --no-worker (or KEEL_EMBEDDED_WORKER=false) when workers run elsewhere."""
    from keel.worker import JobQueue

    with _errors():
        app = _app()
        queue = JobQueue(app)
        again = queue.reclaim()  # jobs whose worker stopped
        err.print(
            f"Keel worker for {app.name}: {threads} thread(s)"
            + (f", {len(again)} job(s) started again" if again else "")
        )
        consumer = queue.consumer(threads)
    consumer.run()
