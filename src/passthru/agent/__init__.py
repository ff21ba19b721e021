"""``passthru serve``: the agent, a FastAPI app on uvicorn over the same service layer as the CLI.

    app.py      create_app(): the FastAPI app, every route registered in the order docs/openapi.json lists them
    schemas.py  request bodies and answer documents (pydantic), the error answers of each route
    routes/     the endpoints, one module per resource: inventory, takeover, models, assignments, vms, vgpu, vf,
                health (the agent's own: /health, /events, /reconcile, /metrics)
    error_handlers.py  errors as JSON {"code", "message"} with their HTTP status
    gate.py     the ASGI gate: bearer token, request body limit, request counters, internal errors as a generic 500
    state.py    Agent: the inventory snapshot kept in memory, writes, reconcile, VM liveness
    events.py   hot-plug events (pyudev, kernel uevents) debounced into inventory refreshes
    vms.py      which VMs run: QEMU processes by -name / -uuid
    metrics.py  GET /metrics (Prometheus text format)
    server.py   where it listens (unix socket 0600 by default; TCP with a token, remote only when allowed; TLS),
                uvicorn
    limits.py   connection limit, header and idle timeouts, open-file limit (uvicorn's h11 protocol, subclassed)
    logfilter.py  rate-limited warnings and errors
"""

from __future__ import annotations

__all__ = ["create_app", "AgentServer", "parse_listen", "load_token"]


def __getattr__(name: str):  # lazy: importing the package must not import FastAPI
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("AgentServer", "parse_listen", "load_token"):
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
