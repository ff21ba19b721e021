"""Errors as JSON: every error the agent answers is ``{"code": ..., "message": ...}`` (docs/agent.md lists the
codes), with the HTTP status its code implies. A refused takeover adds its refusals; a request that does not match
the schema adds the fields at fault.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, HostError, NotFoundError, PassthruError, UsageError
from ..inventory import ClaimError, InvalidState
from ..vfio import RefusedError
from .gate import PayloadTooLarge, internal_doc, too_large_doc
from .state import Agent

__all__ = ["error_status", "error_doc", "invalid", "add_handlers"]

log = logging.getLogger("passthru.agent")


def error_status(e: PassthruError) -> tuple[int, str]:
    if isinstance(e, RefusedError):
        return 409, "refused"
    if isinstance(e, (ClaimError, InvalidState)):
        return 409, "conflict"
    if isinstance(e, NotFoundError):
        return 404, "not_found"
    if isinstance(e, (UsageError, ConfigError)):
        return 400, "bad_request"
    if isinstance(e, HostError):
        return 500, "host_error"
    return 500, "internal"


def error_doc(e: PassthruError) -> tuple[int, dict]:
    status, code = error_status(e)
    doc: dict[str, Any] = {"code": code, "message": str(e)}
    if isinstance(e, RefusedError):
        doc["refusals"] = e.refusals_json()
    return status, doc


def field_errors(errors: list[dict]) -> list[dict]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where, path = (loc[0], loc[1:]) if loc else ("body", [])
        out.append({"field": ".".join(path) or where, "location": where, "message": str(err.get("msg", "")),
                    "type": str(err.get("type", ""))})
    return out


def invalid(field: str, message: str) -> RequestValidationError:
    """A 422 for a rule pydantic cannot express on one field."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])



def add_handlers(app: FastAPI, agent: Agent) -> None:
    def count(code: str) -> None:
        agent.counters.add(agent.counters.errors, ("api", code))

    @app.exception_handler(PassthruError)
    async def passthru_error(_r: Request, e: PassthruError) -> JSONResponse:
        status, doc = error_doc(e)
        count(doc["code"])
        if doc["code"] == "internal":
            doc = internal_doc(e)
        elif status >= 500:
            log.error("%s", e)
        return JSONResponse(doc, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, e: RequestValidationError) -> JSONResponse:
        errs = field_errors(list(e.errors()))
        count("invalid_request")
        msg = "; ".join(f"{x['field']}: {x['message']}" for x in errs) or "invalid request"
        return JSONResponse({"code": "invalid_request", "message": msg, "errors": errs}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(r: Request, e: StarletteHTTPException) -> JSONResponse:
        if isinstance(e, PayloadTooLarge):  # a streamed body past --max-body, met while reading it
            count("payload_too_large")
            return JSONResponse(too_large_doc(e.limit), status_code=413, headers=e.headers)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "bad_request")
        count(code)
        msg = {404: "no such endpoint (GET /openapi.json lists them)"}.get(e.status_code, str(e.detail))
        headers = dict(e.headers or {})
        if e.status_code == 405:  # every method the path has (one route per method: Starlette names one route's)
            routes = [rt for rt in app.routes if getattr(rt, "path_regex", None) is not None]
            first = next((rt for rt in routes if rt.path_regex.match(r.url.path)), None)  # the resource
            allowed = sorted({m for rt in routes if first is not None and rt.path == first.path
                              for m in (getattr(rt, "methods", None) or ())})
            headers["Allow"] = ", ".join(allowed)
            msg = f"{r.method} is not allowed on {r.url.path}; use {' or '.join(allowed)}"
        return JSONResponse({"code": code, "message": msg}, status_code=e.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(_r: Request, e: Exception) -> JSONResponse:  # Gate answers first; this is a backstop
        count("internal")
        return JSONResponse(internal_doc(e), status_code=500)
