"""The agent in a cluster (``passthru serve --cluster URL``): a thread that runs this host's
:class:`~passthru.service.publisher.Publisher` — join at start, heartbeat and reconcile every interval, a device sync
after every hot-plug burst — with its local writes under the agent's write lock, followed by a snapshot refresh."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..inventory.cluster import ClusterStore
from ..inventory.cluster.store import RESERVE_CHANNEL
from ..service.publisher import HEARTBEAT_S, Publisher

__all__ = ["ClusterOptions", "Membership"]

log = logging.getLogger("passthru.agent")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    url: str
    name: str  # this host in the cluster
    address: str | None = None  # where schedulers and operators reach this agent
    interval: float = HEARTBEAT_S
    reserve_ttl: float | None = None  # tests: short reservations


class Membership:
    def __init__(self, agent: Any, opts: ClusterOptions) -> None:
        kw = {} if opts.reserve_ttl is None else {"reserve_ttl": opts.reserve_ttl}
        self.opts = opts
        self.cs = ClusterStore(opts.url, **kw)
        self.publisher = Publisher(agent.session, self.cs, opts.name, opts.address, kernel=agent.kernel,
                                   write=lambda fn: agent.write(fn, refresh="cluster"), interval=opts.interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.publisher.run, args=(self._stop,), name="passthru-cluster",
                                            daemon=True)
            self._thread.start()
            if self.cs.engine.dialect.name == "postgresql":
                threading.Thread(target=self._listen, name="passthru-cluster-listen", daemon=True).start()

    def _listen(self) -> None:
        """PostgreSQL LISTEN on the placement channel: a reservation for this host wakes the publisher at once (the
        heartbeat round would find it anyway, up to an interval later). A lost connection is opened again."""
        import psycopg

        conninfo = self.cs.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {RESERVE_CHANNEL}")
                    delay = 0.5
                    self.publisher.wake(sync=False)  # anything placed while we were not listening
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            if n.payload == self.publisher.name:
                                self.publisher.wake(sync=False)
            except psycopg.Error as e:
                log.debug("cluster listener: %s; listening again in %.1f s", e, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def changed(self, change: dict) -> None:
        """The agent's inventory changed (hot plug): publish the devices again now."""
        if any(change.get(k) for k in ("added", "lost", "back", "replaced")):
            self.publisher.wake(sync=True)

    def stop(self) -> None:
        self._stop.set()
        self.publisher.wake(sync=False)
        if self._thread is not None:
            self._thread.join(timeout=35)
        self.publisher.close()
        self.cs.close()

    def doc(self) -> dict:
        p = self.publisher
        return {"schema": 1, "host": p.name, "address": p.address, "database": self.cs.label, "epoch": p.epoch,
                "joins": p.joins, "interval": p.interval, "last_reconcile": p.last}
