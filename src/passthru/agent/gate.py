"""The agent's outermost own layer (pure ASGI middleware): bearer token, request counters, and internal errors as a
generic 500.

- **Token**: on TCP every request but ``GET /health`` needs ``Authorization: Bearer <token>`` (constant-time
  comparison); otherwise 401 before anything reads the body.
- **Counters**: ``passthru_http_requests_total{method,status}`` with labels from fixed sets only: the methods in
  METHODS, any other method is ``other``; statuses are ints 100-599 (0 otherwise). A client inventing methods
  moves a counter and adds no series.
- **Internal errors**: an exception no handler turned into an answer becomes ``{"code": "internal", "message":
  "internal error (id X); the agent's log has the details"}``, and the log gets the traceback under the same id. The
  exception's text never reaches the client.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any, Callable

__all__ = ["Gate", "METHODS", "method_label", "internal_doc"]

log = logging.getLogger("passthru.agent")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_label(status: Any) -> int:
    return status if isinstance(status, int) and 100 <= status <= 599 else 0


def internal_doc(e: BaseException) -> dict:
    """The answer to a bug: an id to look up in the log, where the traceback is logged with it."""
    eid = secrets.token_hex(4)
    log.error("internal error (id %s): %s: %s", eid, type(e).__name__, e, exc_info=e)
    return {"code": "internal", "message": f"internal error (id {eid}); the agent's log has the details"}


def _json_response(status: int, doc: dict, *extra: tuple[bytes, bytes]) -> tuple[dict, dict]:
    import json

    body = json.dumps(doc, separators=(",", ":")).encode()
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *extra]},
            {"type": "http.response.body", "body": body})


class Gate:
    OPEN = frozenset({"/health"})

    def __init__(self, app: Any, agent: Any, token: str | None) -> None:
        self.app = app
        self.agent = agent
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counters = self.agent.counters
        method = method_label(scope["method"])
        started = False

        async def counted(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                counters.add(counters.requests, (method, status_label(message["status"])))
            await send(message)

        async def reply(status: int, code: str, doc: dict, *extra: tuple[bytes, bytes]) -> None:
            counters.add(counters.errors, ("api", code))
            for message in _json_response(status, doc, *extra):
                await counted(message)

        if self.expected is not None and scope["path"] not in self.OPEN:
            got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(got, self.expected):
                await reply(401, "unauthorized", {
                    "code": "unauthorized", "message": "this listener needs the bearer token: Authorization: Bearer "
                                                       "<contents of the token file (/etc/passthru/token)>"},
                            (b"www-authenticate", b'Bearer realm="passthru"'))
                return
        try:
            await self.app(scope, receive, counted)
        except Exception as e:  # noqa: BLE001 - a bug: answered without its text, logged with an id
            doc = internal_doc(e)
            if started:  # too late for an answer: uvicorn closes the connection
                counters.add(counters.errors, ("api", "internal"))
            else:
                await reply(500, "internal", doc, (b"connection", b"close"))
