"""Where the agent listens, and who may talk to it.

    unix:/run/passthru/agent.sock   (default) a unix socket, mode 0600: only its owner (root) connects
    127.0.0.1:8080 | [::1]:8080     TCP; every request but GET /health needs ``Authorization: Bearer <token>``
    8080 | :8080                    TCP on 127.0.0.1
    0.0.0.0:8080 | [::]:8080 | ...  any address that is not loopback (``0``, ``0.0.0.0`` and ``::`` are every
                                    interface) only with ``allow_remote`` (``--allow-remote``), and then with TLS
                                    (``--tls-cert``/``--tls-key``) or a warning that the token crosses the network
                                    in plain text. The address is resolved (getaddrinfo) and judged as bound.

The token is the content of ``<config_dir>/token`` (``/etc/passthru/token``), generated on first start (32 random
bytes, URL-safe base64, mode 0600) and refused when others can read it.

The agent creates its sockets itself and hands them to uvicorn: a unix socket is bound under a temporary name,
chmod 0600, listening, and only then renamed into place, so it never exists with wider permissions (uvicorn's own
``--uds`` makes a new socket 0666). On exit (SIGTERM, SIGINT) the socket file is removed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import HostError, UsageError
from .limits import Limits

__all__ = ["Listen", "parse_listen", "load_token", "open_socket", "AgentServer", "DEFAULT_SOCKET", "resolve_tcp",
           "remote_reach", "check_remote", "check_tls"]

log = logging.getLogger("passthru.agent")
DEFAULT_SOCKET = "/run/passthru/agent.sock"
BACKLOG = 1024  # the listen queue (the kernel caps it at net.core.somaxconn)
# asyncio accepts up to uvicorn's "backlog" sockets per wakeup before any of them reaches the connection limit's
# protocol; with FD_HEADROOM (limits.py) well above twice this batch, a burst of connections never runs the agent out
# of file descriptors. (asyncio also listen()s with it: limits.loop_factory restores BACKLOG.)
ACCEPT_BATCH = 128


@dataclass(frozen=True, slots=True)
class Listen:
    kind: str  # "unix" | "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``unix:/path``, ``/path``, ``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT``; UsageError otherwise."""
    t = text.strip()
    if t.startswith("unix:") or t.startswith("/"):
        path = t[5:] if t.startswith("unix:") else t
        if not path.startswith("/") or "\0" in path:
            raise UsageError(f"--listen {text!r}: a unix socket needs an absolute path, e.g. unix:{DEFAULT_SOCKET}")
        if len(path.encode()) > 107:
            raise UsageError(f"--listen {text!r}: a unix socket path is at most 107 bytes")
        return Listen("unix", path=path)
    host, port_s = "127.0.0.1", t
    if t.startswith("["):
        end = t.find("]")
        if end < 0 or t[end + 1:end + 2] != ":":
            raise UsageError(f"--listen {text!r}: an IPv6 address is written [::1]:8080")
        host, port_s = t[1:end], t[end + 2:]
    elif ":" in t:
        h, _, port_s = t.rpartition(":")
        host = h or host
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise UsageError(f"--listen {text!r}: use unix:/path/to.sock, HOST:PORT, [::1]:PORT or PORT")
    return Listen("tcp", host=host, port=int(port_s))


def load_token(path: str, *, create: bool = True) -> str:
    """The bearer token in ``path``; generated (0600, atomically: two first starts agree) when missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise HostError(f"{path}: no token file; start the agent once on TCP to generate it") from None
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another start made it first: then that one is the token
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        log.warning("generated the API token %s (mode 0600)", path)
        st = os.stat(path)
    except OSError as e:
        raise HostError(f"{path}: cannot read the token file ({e.strerror})") from None
    if st.st_mode & 0o077:
        raise HostError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                        f"run `chmod 600 {path}` (and consider replacing the token)")
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise HostError(f"{path}: the token must be one line of at least 16 characters; delete the file to get a "
                        "new one")
    return token


def _bind_unix(path: str) -> socket.socket:
    d = os.path.dirname(path)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except OSError as e:
        raise HostError(f"cannot create {d} ({e.strerror}); run as root or --listen elsewhere") from None
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise HostError(f"{path} exists and is not a socket; move it away or --listen elsewhere")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            try:
                probe.connect(path)
            except OSError:
                pass  # stale: a previous agent died without removing it
            else:
                raise HostError(f"another agent is listening on {path}")
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(BACKLOG)
        os.replace(tmp, path)
    except OSError as e:
        sock.close()
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise HostError(f"cannot listen on {path} ({e.strerror})") from None
    return sock


def resolve_tcp(host: str, port: int) -> tuple[int, tuple]:
    """The address family and socket address ``host:port`` binds to (the first getaddrinfo answer)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--listen {host}:{port}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    return family, addr


def remote_reach(addr: tuple) -> str | None:
    """Who else reaches a socket bound to ``addr``: None (loopback: this machine only), "every interface", or
    the address."""
    ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    return "every interface" if ip.is_unspecified else str(ip)


def check_remote(listen: Listen, addr: tuple, allow_remote: bool) -> str | None:
    """UsageError for a TCP address other machines reach, unless ``allow_remote``; returns who reaches it."""
    reach = remote_reach(addr)
    if reach is not None and not allow_remote:
        where = "listens on every interface" if reach == "every interface" else f"is not a loopback address ({reach})"
        raise UsageError(f"--listen {listen} {where}: other machines could connect, and the bearer token would cross "
                         f"the network; use the unix socket (the default), a loopback address (--listen "
                         f"127.0.0.1:{listen.port}), or add --allow-remote with --tls-cert FILE --tls-key FILE")
    return reach


def check_tls(cert: str, key: str) -> None:
    """UsageError unless ``cert`` and ``key`` load as a PEM certificate (chain) and its unencrypted private key."""
    import ssl

    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file; give a PEM file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")  # never a passphrase prompt
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UsageError(f"--tls-cert {cert} --tls-key {key}: cannot use them ({why}); give a PEM certificate and "
                         "its private key (not encrypted), e.g. from `openssl req -x509 -newkey ec -pkeyopt "
                         "ec_paramgen_curve:P-256 -nodes -keyout key.pem -out cert.pem -subj /CN=HOST`") from None


def _bind_tcp(listen: Listen, allow_remote: bool) -> socket.socket:
    assert listen.host is not None and listen.port is not None
    family, addr = resolve_tcp(listen.host, listen.port)
    check_remote(listen, addr, allow_remote)
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when it sees the protocol, and
    # without it a keep-alive client waits out delayed ACKs (~40 ms) on every small response
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise HostError(f"cannot listen on {listen} ({e.strerror})") from None
    return sock


def open_socket(listen: Listen, *, allow_remote: bool = False) -> tuple[socket.socket, Listen]:
    """A listening socket, and where it really listens (port 0 becomes the port the kernel chose). A TCP address
    other machines reach is refused (UsageError) unless ``allow_remote``."""
    if listen.kind == "unix":
        assert listen.path is not None
        return _bind_unix(listen.path), listen
    sock = _bind_tcp(listen, allow_remote)
    return sock, Listen("tcp", host=listen.host, port=sock.getsockname()[1])


class AgentServer:
    """uvicorn serving ``app`` on one socket this class creates. ``run()`` blocks (the CLI); ``start()`` runs it
    in a thread until ``stop()`` (tests, benchmarks). ``limits``: connections and timeouts (limits.py);
    ``tls``: (certificate file, key file) to serve HTTPS; ``allow_remote``: listen on addresses other machines
    reach."""

    def __init__(self, app: Any, listen: Listen, *, log_level: str = "warning", limits: Limits = Limits(),
                 tls: tuple[str, str] | None = None, allow_remote: bool = False) -> None:
        self.app = app
        self.requested = listen
        self.listen = listen
        self.log_level = log_level
        self.limits = limits
        self.tls = tls
        self.allow_remote = allow_remote
        self.connections: Any = None
        self.sock: socket.socket | None = None
        self.server: Any = None
        self._thread: threading.Thread | None = None
        self._inode: tuple[int, int] | None = None

    def open(self) -> Listen:
        self.sock, self.listen = open_socket(self.requested, allow_remote=self.allow_remote)
        if self.listen.kind == "unix":
            st = os.stat(self.listen.path)  # type: ignore[arg-type]
            self._inode = (st.st_dev, st.st_ino)
        return self.listen

    def _server(self) -> Any:
        import uvicorn

        from .limits import Connections, loop_factory, protocol_class

        self.connections = Connections(self.limits)
        agent = getattr(getattr(self.app, "state", None), "agent", None)
        if agent is not None:
            agent.connections = self.connections  # for /metrics
        loop = loop_factory(self.limits.header_timeout, BACKLOG)

        class Config(uvicorn.Config):
            def get_loop_factory(self) -> Any:
                return loop

        cert, key = self.tls or (None, None)
        config = Config(self.app, log_config=None, log_level=self.log_level, access_log=False,
                        lifespan="on", server_header=False, date_header=False, proxy_headers=False,
                        timeout_graceful_shutdown=10, http=protocol_class(self.connections), backlog=ACCEPT_BATCH,
                        timeout_keep_alive=self.limits.idle_timeout,  # type: ignore[arg-type]
                        ssl_certfile=cert, ssl_keyfile=key)
        self.server = uvicorn.Server(config)
        return self.server

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (main thread) or stop(); then remove the unix socket."""
        if self.sock is None:
            self.open()
        server = self.server or self._server()
        in_main = threading.current_thread() is threading.main_thread()
        old: dict[int, Any] = {}
        if in_main:
            # uvicorn re-raises a caught SIGTERM after its graceful shutdown; with the default disposition that
            # kills the process before the socket file is removed. A no-op handler lets run() finish instead.
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, lambda *_: None)
        try:
            server.run(sockets=[self.sock])
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            self.cleanup()
        if not server.started:
            raise HostError("the agent did not start (see the log above)")

    def cleanup(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.listen.kind == "unix" and self._inode is not None:
            try:
                st = os.lstat(self.listen.path)  # type: ignore[arg-type]
                if (st.st_dev, st.st_ino) == self._inode:  # never remove a newer agent's socket
                    os.unlink(self.listen.path)  # type: ignore[arg-type]
            except OSError:
                pass
            self._inode = None

    def start(self, timeout: float = 60) -> Listen:
        if self.sock is None:
            self.open()
        server = self._server()
        self._thread = threading.Thread(target=self.run, name="passthru-agent", daemon=True)
        self._thread.start()
        import time

        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HostError("the agent did not start")
            time.sleep(0.01)
        return self.listen

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
