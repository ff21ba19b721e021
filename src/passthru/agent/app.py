"""The agent as an ASGI app (FastAPI): the CLI's verbs as endpoints over the same service layer.

Every error is JSON ``{"code": ..., "message": ...}`` (error_handlers.py; docs/agent.md lists the codes). Request
bodies are checked as a whole before anything runs (schemas.py), so a bad request changes nothing; a refused or
failed write rolls back what it did (the service layer's rule) and the inventory snapshot is refreshed after every
write (state.py). The endpoints live in routes/, one module per resource, and are registered here.

``python -m passthru.agent.app > docs/openapi.json`` writes the OpenAPI document the tests compare with.
"""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from .. import __version__
from ..service.session import Session
from .error_handlers import add_handlers
from .events import UdevSource
from .gate import Gate
from .membership import ClusterOptions, Membership
from .routes import assignments, cluster, health, inventory, models, takeover, topology, vf, vgpu, vms
from .state import Agent

__all__ = ["create_app", "openapi_document", "API_VERSION"]

API_VERSION = 1


def _source(udev: Any, agent_host_live: bool) -> Any:
    if udev is True:
        if not agent_host_live:
            return None  # a fixture or captured root: the kernel's events are about another machine
        return UdevSource  # opened at start
    return udev or None


def create_app(root: str | None = None, config_dir: str | None = None, state_dir: str | None = None, *,
               session_factory: Callable[[], Session] | None = None, kernel: Any = None, token: str | None = None,
               reconcile_on_start: bool = True, release_gone: bool = False, udev: Any = True,
               debounce: float = 0.2, max_body: int = 1 << 20, cluster: ClusterOptions | None = None) -> FastAPI:
    """The agent as an ASGI app. ``kernel``: the takeover's kernel boundary (tests: a fake one on a fixture root;
    None: the real one). ``token``: required as ``Authorization: Bearer`` on every endpoint but /health (TCP).
    ``udev``: True for the kernel's hot-plug events on the live host, False for none, or an event source
    (``events.QueueSource``). ``max_body``: the largest request body in bytes (413 above it). ``cluster``: publish
    this host to a cluster database and carry out its reservations (membership.py)."""
    factory = session_factory or (lambda: Session(root, config_dir, state_dir))
    probe = factory()
    agent = Agent(factory, kernel=kernel, release_gone=release_gone,
                  event_source=_source(udev, probe.host.is_live), debounce=debounce)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        await run_in_threadpool(lambda: agent.start(reconcile=reconcile_on_start))
        if agent.membership is not None:
            agent.membership.start()
        try:
            yield
        finally:
            if agent.membership is not None:
                await run_in_threadpool(agent.membership.stop)
            agent.stop()

    app = FastAPI(title="passthru agent", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json",
                  description="VM device passthrough for this KVM host: inventory, IOMMU groups, doctor, vfio-pci "
                              "takeover, assignments, hot plug. docs/agent.md describes it.")
    if cluster is not None:
        agent.membership = Membership(agent, cluster)
    app.state.agent = agent
    app.add_middleware(Gate, agent=agent, token=token, max_body=max_body)
    add_handlers(app, agent)
    _add_routes(app, agent)
    return app


def _add_routes(app: FastAPI, agent: Agent) -> None:
    """Every endpoint, in the order the OpenAPI document lists them: the reads, the writes, then vGPUs and VFs."""
    health.add_health(app, agent)  # GET /health
    inventory.add_reads(app, agent)  # GET /devices /groups /usb /serial /doctor
    topology.add_reads(app, agent)  # GET /topology
    takeover.add_reads(app, agent)  # GET /status
    models.add_reads(app, agent)  # GET /models
    assignments.add_reads(app, agent)  # GET /assignments
    health.add_reads(app, agent)  # GET /events /reconcile /metrics
    health.add_writes(app, agent)  # POST /reconcile
    takeover.add_writes(app, agent)  # POST /bind /restore
    models.add_writes(app, agent)  # POST /models, DELETE /models/{name}
    assignments.add_writes(app, agent)  # POST /assign /release
    vms.add_writes(app, agent)  # POST /attach /detach
    vgpu.add_routes(app, agent)  # /vgpu/types, /vgpu/instances[/{ident}]
    vf.add_routes(app, agent)  # /vf, /vf/count, /vf/set, /vf/reset
    cluster.add_routes(app, agent)  # /cluster, /cluster/hosts|devices|allocations|place|release|fence


def openapi_document() -> dict:
    """The schema docs/openapi.json commits (``python -m passthru.agent.app > docs/openapi.json``)."""
    return create_app("/nonexistent", udev=False, reconcile_on_start=False).openapi()


if __name__ == "__main__":
    sys.stdout.write(json.dumps(openapi_document(), indent=2, sort_keys=False) + "\n")
