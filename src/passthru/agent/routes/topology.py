"""The topology page (tag inventory): ``GET /topology`` is ``passthru topology --html`` for the agent's current
snapshot; ``?format=svg`` the picture alone, ``?format=json`` the tree document. The page is live: it asks
``/health`` for the snapshot's generation every few seconds and reloads when the host changed (a hot-plug event,
a write, a reconcile)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ...identity import pci_address
from ...service.topology import topology_doc
from ...service.topology_svg import topology_html, topology_svg
from ..schemas import error_responses
from ..state import Agent, Snapshot, dumps

__all__ = ["add_reads"]

MEDIA = {"html": "text/html; charset=utf-8", "svg": "image/svg+xml", "json": "application/json"}
POLL_MS = 3000


def _build(snap: Snapshot, fmt: str) -> bytes:
    """The page, picture or document of one snapshot, built once (under the snapshot's lock) and kept with it."""
    key = ("topology", fmt)
    got = snap.docs.get(key)
    if got is not None:
        return got
    with snap.lock:
        got = snap.docs.get(key)
        if got is None:
            doc = snap.docs.get(("topology", "doc"))
            if doc is None:
                held = {pci_address(r["identity"]): r["vm"] for r in snap.rows
                        if r.get("vm") and pci_address(r["identity"])}
                doc = snap.docs[("topology", "doc")] = topology_doc(snap.session, held)  # type: ignore[assignment]
            d: Any = doc
            if fmt == "json":
                got = dumps(d)
            elif fmt == "svg":
                got = topology_svg(d).encode()
            else:
                got = topology_html(d, generation=snap.generation, poll_ms=POLL_MS).encode()
            snap.docs[key] = got
    return got


def add_reads(app: FastAPI, agent: Agent) -> None:
    """GET /topology"""

    @app.get("/topology", tags=["inventory"],
             summary="The PCI topology as a live HTML page (as `passthru topology --html`), or its SVG or JSON",
             responses={200: {"description": "The page (text/html), the picture (?format=svg) or the tree "
                                             "(?format=json, as `passthru topology --json`).",
                               "content": {"text/html": {"schema": {"type": "string"}},
                                           "image/svg+xml": {"schema": {"type": "string"}},
                                           "application/json": {"schema": {"type": "object"}}}},
                        **error_responses(401, 422)})
    async def topology(format: Annotated[Literal["html", "svg", "json"],  # noqa: A002 - the query's name
                                         Query(description="html (default): the page; svg: the picture; json: "
                                                           "the tree document")] = "html") -> Response:
        snap = await run_in_threadpool(agent.snapshot)
        data = await run_in_threadpool(_build, snap, format)
        return Response(data, media_type=MEDIA[format], headers={"x-passthru-generation": str(snap.generation)})
