"""Search and ingestion (ingestion runs as a background job)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from keel.api.gateway import Gateway, Job
from keel.api.problems import COMMON, Problem, documented
from keel.api.routes._common import gateway
from keel.api.schemas import IngestJson, SearchRequest

router = APIRouter(tags=["knowledge"], responses=documented(*COMMON))


@router.post("/v1/search", summary="Hybrid search with citations")
def search(body: SearchRequest, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    gw.authenticate(request, "chat")
    hits = gw.app.search(body.query, body.k, where=body.where, mode=body.mode)
    return {"hits": [h.to_dict() for h in hits]}


def _run(gw: Gateway, job: Job, make_items: Any, cleanup: Any = None) -> None:
    job.state = "running"
    try:
        report = gw.app.ingest_documents(make_items())
        job.report = report.to_dict()
        job.state = "done"
    except Exception as exc:  # recorded on the job; the gateway stays up
        job.error = f"{type(exc).__name__}: {exc}"
        job.state = "failed"
    finally:
        if cleanup is not None:
            cleanup()


@router.post("/v1/ingest", status_code=202, summary="Ingest files or JSON documents (a job)")
async def ingest(request: Request) -> dict[str, Any]:
    """``multipart/form-data`` with one or more ``files`` (document ids are
    ``uploads/<file name>``), or JSON ``{"documents": [{"id", "text", ...}]}``. Answers 202
    with a job; poll ``GET /v1/ingest/{job}``."""
    gw = gateway(request)
    key = gw.authenticate(request, "ingest")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    job = gw.new_job(key.id)
    if ctype == "application/json":
        from pydantic import ValidationError

        try:
            body = IngestJson.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise Problem(422, f"{where}: {first['msg']}") from None
        from keel.rag.types import Document

        docs = [
            Document(
                id=d.id,
                text=d.text,
                source=f"api/{d.id}",
                title=d.title,
                format="markdown" if d.format == "markdown" else "text",
                metadata=dict(d.metadata),
            )
            for d in body.documents
        ]
        threading.Thread(target=_run, args=(gw, job, lambda: docs), daemon=True).start()
        return job.to_dict()
    if ctype != "multipart/form-data":
        raise Problem(415, "send multipart/form-data files or application/json documents")
    form = await request.form(max_files=100)
    from starlette.datastructures import UploadFile

    uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not uploads:
        raise Problem(422, "no files: send them in the 'files' field")
    tmp = Path(tempfile.mkdtemp(prefix="keel-upload-"))
    cap = gw.app.config.limits.max_upload_bytes
    total = 0
    for upload in uploads:
        name = Path(str(upload.filename or "")).name  # never a path from the client
        if not name or name.startswith("."):
            raise Problem(422, f"bad file name {upload.filename!r}")
        data = await upload.read()
        total += len(data)
        if total > cap:
            raise Problem(413, f"uploads are larger than {cap} bytes")
        (tmp / name).write_bytes(data)

    def items() -> Any:
        from dataclasses import replace

        from keel.rag.loaders import iter_documents
        from keel.rag.types import Document

        for item in iter_documents([tmp], root=tmp, max_bytes=cap):
            if isinstance(item, Document):
                yield replace(item, id=f"uploads/{item.id}", source=f"uploads/{item.source}")
            else:
                yield item

    def cleanup() -> None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)

    threading.Thread(target=_run, args=(gw, job, items, cleanup), daemon=True).start()
    return job.to_dict()


@router.get("/v1/ingest/{job_id}", summary="An ingestion job's state and report")
def ingest_job(job_id: str, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    key = gw.authenticate(request, "ingest")
    job = gw.jobs.get(job_id)
    if job is None or (job.key_id != key.id and not key.is_admin):
        raise Problem(404, f"no ingestion job {job_id!r}")
    return job.to_dict()
