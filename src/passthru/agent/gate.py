"""The agent's outermost own layer (pure ASGI middleware): bearer token, request body limit, request counters, and
internal errors as a generic 500.

- **Token**: on TCP every request but ``GET /health`` needs ``Authorization: Bearer <token>`` (constant-time
  comparison); otherwise 401 before anything reads the body.
- **Body limit** (after the token check): ``Content-Length`` over the limit is a 413 ``payload_too_large`` without
  reading the body; a streamed (chunked) body is counted as it arrives and cut off with a 413 once past the limit
  (:class:`PayloadTooLarge` raised from ``receive``; FastAPI re-raises HTTP exceptions while reading a body, and the
  app's handler answers it with :func:`too_large_doc`). Never more than the limit plus one read is buffered. Both
  answers close the connection: the rest of the body is never read.
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

from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["Gate", "PayloadTooLarge", "METHODS", "method_label", "too_large_doc", "internal_doc"]

log = logging.getLogger("passthru.agent")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
CLOSE = (b"connection", b"close")


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_label(status: Any) -> int:
    return status if isinstance(status, int) and 100 <= status <= 599 else 0


def _size(n: int) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} bytes"


class PayloadTooLarge(StarletteHTTPException):
    """A request body past the limit (raised from ``receive`` while the app reads it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_doc(limit)["message"], headers={"Connection": "close"})
        self.limit = limit


def too_large_doc(limit: int) -> dict:
    return {"code": "payload_too_large", "message": f"the request body is larger than the agent's limit of "
                                                    f"{_size(limit)}; send less, or start the agent with a larger "
                                                    f"--max-body"}


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

    def __init__(self, app: Any, agent: Any, token: str | None, max_body: int = 1 << 20) -> None:
        self.app = app
        self.agent = agent
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body

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

        length, has_body = _body_headers(scope["headers"])
        if self.expected is not None and scope["path"] not in self.OPEN:
            got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(got, self.expected):
                await reply(401, "unauthorized", {
                    "code": "unauthorized", "message": "this listener needs the bearer token: Authorization: Bearer "
                                                       "<contents of the token file (/etc/passthru/token)>"},
                            (b"www-authenticate", b'Bearer realm="passthru"'), *([CLOSE] if has_body else []))
                return
        if length is not None and length > self.max_body:
            await reply(413, "payload_too_large", too_large_doc(self.max_body), CLOSE)
            return
        limit, seen = self.max_body, 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(limit)
            return message

        try:
            await self.app(scope, limited, counted)
        except PayloadTooLarge:
            if not started:
                await reply(413, "payload_too_large", too_large_doc(limit), CLOSE)
        except Exception as e:  # noqa: BLE001 - a bug: answered without its text, logged with an id
            doc = internal_doc(e)
            if started:  # too late for an answer: uvicorn closes the connection
                counters.add(counters.errors, ("api", "internal"))
            else:
                await reply(500, "internal", doc, CLOSE)


def _body_headers(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """The declared Content-Length (None when absent or not a number) and whether the request has a body."""
    length, chunked = None, False
    for k, v in headers:
        if k == b"content-length":
            length = int(v) if v.strip().isdigit() else None
        elif k == b"transfer-encoding":
            chunked = True
    return length, chunked or bool(length)
