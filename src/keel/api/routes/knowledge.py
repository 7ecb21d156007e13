"""Search and ingestion (ingestion runs as a background job)."""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from keel.api.gateway import Gateway
from keel.api.keys import ApiKey
from keel.api.problems import COMMON, Problem, documented
from keel.api.routes._common import gateway
from keel.api.schemas import IngestJson, SearchRequest
from keel.errors import UsageError
from keel.rag.access import LABEL_PREFIX, parse_labels
from keel.worker import IngestWork, UploadedFile

_log = logging.getLogger(__name__)

router = APIRouter(tags=["knowledge"], responses=documented(*COMMON))


@router.post("/v1/search", summary="Hybrid search with citations")
def search(body: SearchRequest, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    key = gw.authenticate(request, "chat")
    hits = gw.app.search(
        body.query, body.k, where=body.where, mode=body.mode, readable=key.readable
    )
    return {"hits": [h.to_dict() for h in hits]}


@router.post("/v1/ingest", status_code=202, summary="Ingest files or JSON documents (a job)")
async def ingest(request: Request) -> dict[str, Any]:
    """``multipart/form-data`` with one or more ``files`` (document ids are
    ``uploads/<file name>``), or JSON ``{"documents": [{"id", "text", ...}]}``. Answers 202
    with a job; poll ``GET /v1/ingest/{job}``. A key without ``admin`` writes only under
    ``uploads/`` (its JSON document ids are prefixed so) and never replaces a document
    another key, or the app itself, created (409)."""
    gw = gateway(request)
    key = gw.authenticate(request, "ingest")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        from pydantic import ValidationError

        try:
            body = IngestJson.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise Problem(422, f"{where}: {first['msg']}") from None
        labels = _labels(key, body.labels, default=False)
        for d in body.documents:
            if any(k.startswith(LABEL_PREFIX) for k in d.metadata):
                raise Problem(422, f"metadata keys '{LABEL_PREFIX}...' are Keel's: use 'labels'")
        docs: list[dict[str, Any]] = []
        for d in body.documents:
            own = _labels(key, d.labels, default=not labels)
            docs.append(
                {
                    "id": _namespaced(d.id, key),
                    "text": d.text,
                    "source": f"api/{_namespaced(d.id, key)}",
                    "title": d.title,
                    "format": "markdown" if d.format == "markdown" else "text",
                    "metadata": dict(d.metadata),
                    "labels": list(own),
                }
            )
        _check_creators(gw, key, [str(d["id"]) for d in docs])
        work = IngestWork("documents", key.id, key.is_admin, documents=docs, labels=list(labels))
        return gw.submit(work).to_dict()
    if ctype != "multipart/form-data":
        raise Problem(415, "send multipart/form-data files or application/json documents")
    form = await request.form(max_files=100)
    try:
        return await _ingest_files(gw, key, form)
    finally:
        await form.close()  # the parser's spooled temporary files


async def _ingest_files(gw: Gateway, key: ApiKey, form: Any) -> dict[str, Any]:
    from starlette.datastructures import UploadFile

    uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not uploads:
        raise Problem(422, "no files: send them in the 'files' field")
    names = [_file_name(upload.filename) for upload in uploads]
    _check_creators(gw, key, [f"uploads/{n}" for n in names])
    cap = gw.app.config.limits.max_upload_bytes
    total = 0
    files = []
    for upload, name in zip(uploads, names, strict=True):
        data = await upload.read()
        total += len(data)
        if total > cap:
            raise Problem(413, f"uploads are larger than {cap} bytes")
        files.append(UploadedFile(name, data))
    raw = [v for v in form.getlist("labels") if isinstance(v, str)]
    labels = _labels(key, [label for v in raw for label in v.split(",")])
    work = IngestWork("files", key.id, key.is_admin, files=files, labels=list(labels))
    return gw.submit(work).to_dict()


def _labels(key: ApiKey, raw: list[str], *, default: bool = True) -> tuple[str, ...]:
    """Access labels a request gives its documents: checked (422), only labels the key holds
    (403). None given by a key that has labels (and is not admin): the key's own, when
    ``default``, so what a tenant uploads stays the tenant's."""
    try:
        labels = parse_labels(raw)
    except UsageError as exc:
        raise Problem(422, str(exc)) from None
    refused = key.may_assign(labels)
    if refused:
        raise Problem(403, f"this key may not assign the label {refused[0]!r}", labels=refused)
    if not labels and default and not key.is_admin:
        return tuple(sorted(key.labels))
    return labels


def _file_name(raw: str | None) -> str:
    """An upload's file name, checked: never a path, a hidden file, longer than a file system
    takes (255 bytes), or holding NUL, control characters or lone surrogates (422)."""
    name = Path(str(raw or "")).name  # never a path from the client
    if not name or name.startswith("."):
        raise Problem(422, f"bad file name {raw!r}")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise Problem(422, "a file name holds a control character, NUL or a lone surrogate")
    if len(name.encode("utf-8")) > 255:
        raise Problem(422, "a file name is longer than 255 bytes")
    return name


def _namespaced(doc_id: str, key: ApiKey) -> str:
    """A JSON document's id: as given for an admin key, under ``uploads/`` for any other."""
    if key.is_admin or doc_id.startswith("uploads/"):
        return doc_id
    return f"uploads/{doc_id}"


def _check_creators(gw: Gateway, key: ApiKey, doc_ids: list[str]) -> None:
    """409 when a key without ``admin`` would replace a document it did not create."""
    if key.is_admin:
        return
    creators = gw.app.manifest().creators(doc_ids)
    taken = sorted(d for d, by in creators.items() if by != key.id)
    if taken:
        raise Problem(
            409,
            f"document {taken[0]!r} was not created by this key: it cannot be replaced",
            documents=taken[:20],
        )


@router.get("/v1/ingest/{job_id}", summary="An ingestion job's state and report")
def ingest_job(job_id: str, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    key = gw.authenticate(request, "ingest")
    job = gw.queue.jobs.get(job_id)
    if job is None or (job.key_id != key.id and not key.is_admin):
        raise Problem(404, f"no ingestion job {job_id!r}")
    return job.to_dict()
