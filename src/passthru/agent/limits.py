"""What one client may hold of the agent: connections, time to send request headers, body size, file descriptors.

    header timeout    a connection must complete its request headers within N s of connecting (or, on a kept-alive
                      connection, of the first byte of its next request); otherwise it is closed
    idle timeout      a kept-alive connection with no next request is closed after N s (uvicorn's keep-alive)
    connection limit  at most N open connections. A new one over the limit closes the connection that has waited
                      longest for complete request headers (half-open or idle); so connections held open by a slow
                      or hostile client cannot keep a real client out. Only when every connection is busy with a
                      request is the new one refused (503)
    body limit        enforced by ``gate.Gate`` after the token check: ``Content-Length`` over it is a 413 without
                      reading the body; a streamed body is counted as it arrives and cut off with a 413
    descriptors       at start the soft RLIMIT_NOFILE is raised towards the hard limit, to the connection limit plus
                      FD_HEADROOM; when the hard limit is lower, the connection limit shrinks to fit

The connection rules live in a subclass of uvicorn's h11 protocol (``Config(http=...)``): uvicorn creates one
protocol object per accepted connection and calls ``connection_made``, ``data_received``, ``on_response_complete``
(through the request cycle) and ``connection_lost`` on it, all on the event loop's thread, which is the only thread
that touches :class:`Connections`. With TLS, asyncio completes the handshake before ``connection_made``; the
handshake is bounded by the header timeout (:func:`loop_factory`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from ..errors import UsageError

__all__ = ["Limits", "Connections", "protocol_class", "loop_factory", "raise_fd_limit", "parse_size", "FD_HEADROOM"]

log = logging.getLogger("passthru.agent")
# descriptors besides the connections: the agent's own (listener, store, sysfs reads in worker threads, netlink,
# logs: about 30), sockets accepted but not yet seen by the protocol (up to server.BACKLOG per wakeup), and the
# connections closed at the limit whose descriptors close on the loop's next turn
FD_HEADROOM = 512
MIN_CONNECTIONS = 16


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 1000
    header_timeout: float = 10.0
    idle_timeout: float = 5.0
    max_body: int = 1 << 20

    def check(self) -> Limits:
        """Itself, or UsageError naming the flag that is out of range."""
        if not MIN_CONNECTIONS <= self.max_connections <= 1_000_000:
            raise UsageError(f"--max-connections {self.max_connections}: use {MIN_CONNECTIONS} to 1000000")
        for flag, v in (("--header-timeout", self.header_timeout), ("--idle-timeout", self.idle_timeout)):
            if not 0 < v <= 3600:
                raise UsageError(f"{flag} {v:g}: use a number of seconds above 0 and at most 3600")
        if not 1 <= self.max_body <= 1 << 40:
            raise UsageError(f"--max-body {self.max_body}: use 1 byte to 1T (e.g. 1M, 64K, 1048576)")
        return self


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.I)


def parse_size(text: str, flag: str = "--max-body") -> int:
    """``1048576``, ``64K``, ``1M``, ``1MiB``, ``2G`` (powers of 1024) as bytes; UsageError otherwise."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"{flag} {text!r}: give bytes, or a number with K, M or G (1M = 1048576 bytes)")
    return int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())


def raise_fd_limit(limits: Limits) -> Limits:
    """Raise the soft RLIMIT_NOFILE to what ``limits`` needs (at most the hard limit). Returns ``limits``, with
    fewer connections when the hard limit has no room for them (logged)."""
    want = limits.max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d (%s)", soft, ceiling, e)
    fit = want if soft == resource.RLIM_INFINITY else soft - FD_HEADROOM
    if fit >= limits.max_connections:
        return limits
    fit = max(MIN_CONNECTIONS, fit)
    log.warning("the open-file limit is %d (hard %s): serving at most %d connections, not %d; raise LimitNOFILE= in "
                "the unit (or ulimit -n) to at least %d", soft, "unlimited" if hard == resource.RLIM_INFINITY
                else hard, fit, limits.max_connections, want)
    return replace(limits, max_connections=fit)


class Connections:
    """The open connections of one server, and those waiting for request headers, longest waiting first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: set[Any] = set()
        self.waiting: OrderedDict[Any, None] = OrderedDict()
        self.closed = {"header_timeout": 0, "evicted": 0, "refused": 0}  # for /metrics

    def admit(self, conn: Any) -> bool:
        """Room for ``conn``: closes the longest-waiting connections while at the limit. False when every open
        connection is busy with a request (then ``conn`` is refused)."""
        while len(self.open) >= self.limits.max_connections:
            if not self.waiting:
                self.closed["refused"] += 1
                log.warning("connection limit (%d) reached and every connection is busy: refused a new one (503)",
                            self.limits.max_connections)
                return False
            victim = next(iter(self.waiting))
            self.closed["evicted"] += 1
            log.warning("connection limit (%d) reached: closed the connection that waited longest for its request "
                        "headers", self.limits.max_connections)
            victim.drop()
        self.open.add(conn)
        self.waiting[conn] = None
        return True

    def wait(self, conn: Any) -> None:
        """``conn`` has no request in progress: it waits for headers (now the newest waiting)."""
        self.waiting.pop(conn, None)
        if conn in self.open:
            self.waiting[conn] = None

    def busy(self, conn: Any) -> None:
        self.waiting.pop(conn, None)

    def forget(self, conn: Any) -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)


_REFUSED = (b'{"code":"unavailable","message":"the agent has as many connections as it serves (--max-connections), '
            b'all busy; try again"}')


def protocol_class(registry: Connections) -> type:
    """uvicorn's h11 protocol with the header timeout and the connection limit of ``registry``."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class AgentH11Protocol(H11Protocol):
        agent_connections = registry  # (uvicorn has its own self.connections)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._waiting = True  # for request headers (no request in progress)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if not self.agent_connections.admit(self):
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSED), _REFUSED))
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting:
                self._arm()  # a kept-alive connection's next request: its headers are due from its first byte
            super().data_received(data)
            self._track()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._track()

        def connection_lost(self, exc: Exception | None) -> None:
            self.agent_connections.forget(self)
            self._disarm()
            super().connection_lost(exc)

        def _track(self) -> None:
            c = self.cycle
            if c is not None and not c.response_complete:  # a request's headers are complete: it runs
                if self._waiting:
                    self._waiting = False
                    self._disarm()
                    self.agent_connections.busy(self)
            elif not self._waiting:
                self._waiting = True
                self.agent_connections.wait(self)

        def _arm(self) -> None:
            if self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(self.agent_connections.limits.header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._waiting and not self.transport.is_closing():
                self.agent_connections.closed["header_timeout"] += 1
                log.debug("closed a connection that sent no complete request headers in %gs",
                          self.agent_connections.limits.header_timeout)
                self.drop()

        def drop(self) -> None:
            """Close now (header timeout, or evicted at the connection limit)."""
            self.agent_connections.forget(self)
            self._disarm()
            if not self.transport.is_closing():
                self.transport.close()

    return AgentH11Protocol


def loop_factory(handshake_timeout: float, listen_queue: int) -> type[asyncio.AbstractEventLoop]:
    """An asyncio loop for the agent's server: TLS handshakes give up after ``handshake_timeout`` s (asyncio's
    default is 60 s, and uvicorn passes none; a connection in its handshake is not yet the protocol's to time out),
    and a socket handed in keeps a listen queue of ``listen_queue`` (asyncio re-listens with its accept batch)."""

    class AgentLoop(asyncio.SelectorEventLoop):
        async def create_server(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if kwargs.get("ssl") is not None and kwargs.get("ssl_handshake_timeout") is None:
                kwargs["ssl_handshake_timeout"] = handshake_timeout
            server = await super().create_server(*args, **kwargs)
            if kwargs.get("sock") is not None:
                kwargs["sock"].listen(listen_queue)
            return server

    return AgentLoop
