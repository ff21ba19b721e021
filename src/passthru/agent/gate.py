"""The agent's outermost own layer (pure ASGI middleware): bearer token and request counters.

- **Token**: on TCP every request but ``GET /health`` needs ``Authorization: Bearer <token>`` (constant-time
  comparison); otherwise 401 before anything reads the body.
- **Counters**: ``passthru_http_requests_total{method,status}`` with labels from fixed sets only: the methods in
  METHODS, any other method is ``other``; statuses are ints 100-599 (0 otherwise). A client inventing methods
  moves a counter and adds no series.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable

__all__ = ["Gate", "METHODS", "method_label"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_label(status: Any) -> int:
    return status if isinstance(status, int) and 100 <= status <= 599 else 0


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

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start":
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
        await self.app(scope, receive, counted)
