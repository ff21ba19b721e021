"""The agent's own endpoints (tag agent): liveness, recent inventory changes, reconcile, metrics."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from ... import __version__
from ...errors import NotFoundError
from ..metrics import CONTENT_TYPE, render_metrics
from ..schemas import EventsDoc, HealthDoc, ReconcileBody, ReconcileDoc, error_responses
from ..state import Agent

__all__ = ["add_health", "add_reads", "add_writes"]


def add_health(app: FastAPI, agent: Agent) -> None:
    """GET /health"""

    @app.get("/health", response_model=HealthDoc, tags=["agent"], summary="Liveness (no token needed)")
    async def health() -> JSONResponse:
        snap = agent.current
        return JSONResponse({"status": "ok", "version": __version__, "generation": snap.generation if snap else 0})


def add_reads(app: FastAPI, agent: Agent) -> None:
    """GET /events, /reconcile (the last report), /metrics"""

    @app.get("/events", response_model=EventsDoc, responses=error_responses(401), tags=["agent"],
             summary="Recent inventory changes (hot plug, lost devices, moved USB devices), oldest first")
    def events() -> JSONResponse:
        return JSONResponse({"schema": 1, "changes": list(agent.changes)})

    @app.get("/reconcile", response_model=ReconcileDoc, responses=error_responses(401, 404), tags=["agent"],
             summary="The last reconcile's report")
    def last_reconcile() -> JSONResponse:
        if agent.last_reconcile is None:
            raise NotFoundError("no reconcile has run yet (the agent runs with --no-reconcile); POST /reconcile")
        return JSONResponse(agent.last_reconcile)

    @app.get("/metrics", tags=["agent"], responses={200: {"content": {"text/plain": {}}}, **error_responses(401)},
             summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(render_metrics(agent), media_type=CONTENT_TYPE)


def add_writes(app: FastAPI, agent: Agent) -> None:
    """POST /reconcile"""

    @app.post("/reconcile", response_model=ReconcileDoc, responses=error_responses(400, 401, 413, 422), tags=["agent"],
              summary="Re-apply persisted bindings and vGPUs, mark lost devices, check VMs")
    def reconcile(body: ReconcileBody | None = None) -> JSONResponse:
        return JSONResponse(agent.reconcile(release_gone=body.release_gone if body else None))
