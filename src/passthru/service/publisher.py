"""This host in the cluster: the agent's side of ``passthru serve --cluster URL``.

    pub = Publisher(session_factory, ClusterStore(url), "gpu-07", "10.0.0.7:8470")
    pub.start()          # join: a new epoch, devices published, then reconcile with the cluster
    pub.run(stop)        # heartbeat and reconcile every interval; sync on udev events (pub.wake()) and every
                         # sync_every intervals; a fence or another agent's join (StaleEpoch) makes it join again

Reconcile is where the cluster and the host meet. The host's own inventory (its local store: who holds what here) is
the truth about this host; the cluster's allocations are the scheduler's word:

    cluster says                       host holds it for that VM     host does not
    reserved (not expired) for VM      confirm                        take it over (assign: claim + vfio-pci),
                                                                      then confirm; refused: drop it ("refused")
    confirmed for VM                   keep (renew into this epoch)   drop it ("not held")
    nothing live, its newest ended     release it here (the cluster    -
      allocation was this VM's           released, expired or fenced
      (released/expired/fenced)          it: the scheduler moved on)
    nothing live otherwise             adopt it (assigned here by     -
                                       hand: the cluster must know)

A takeover whose confirmation is refused (the reservation expired meanwhile, or the host was fenced) is undone: the
local assignment released and the devices it moved given back. Killed between takeover and confirmation (kill -9),
the reservation expires; at the next start the local assignment is released (the "ended" row above).
Local writes go through ``write`` (the agent's write lock and snapshot refresh); the cluster's through the store,
whose epoch check refuses an agent that was fenced or replaced.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..errors import PassthruError
from ..failpoints import hit
from ..identity import pci_address
from ..inventory.cluster import ClusterStore, StaleEpoch
from .assign import assign, open_store
from .cluster import local_devices
from .release import release
from .session import Session

__all__ = ["Publisher", "HEARTBEAT_S", "SYNC_EVERY"]

log = logging.getLogger("passthru.cluster")
HEARTBEAT_S = 5.0  # the cluster marks a host suspect after 15 s without one, down after 60 s
SYNC_EVERY = 6  # a full device sync every this many heartbeats (30 s), besides the one on each hot-plug burst
_ENDED_HERE = ("released", "expired", "fenced")  # the cluster let go of it: so does the host


def _spec(identity: str) -> str:
    """The ``assign``/``release`` spec naming one published device (the cluster publishes PCI functions)."""
    return pci_address(identity) or identity


class Publisher:
    def __init__(self, session_factory: Callable[[], Session], cs: ClusterStore, name: str,
                 address: str | None = None, *, kernel: Any = None, write: Callable[..., Any] | None = None,
                 interval: float = HEARTBEAT_S, sync_every: int = SYNC_EVERY) -> None:
        self.session_factory = session_factory
        self.cs = cs
        self.name = name
        self.address = address
        self.kernel = kernel
        self._write = write or self._read  # local changes (the agent: under its write lock, then a refresh)
        self.interval = interval
        self.sync_every = max(1, sync_every)
        self.epoch: int | None = None
        self.last: dict | None = None  # the last reconcile's report
        self.joins = 0
        self._wake = threading.Event()
        self._sync_wanted = False
        self._lock = threading.Lock()  # one cluster round at a time (run loop, wake-ups, the API)
        self._local: Any = None  # this host's own inventory, for reading who holds what

    def _read(self, fn: Callable[[Session], Any]) -> Any:
        return fn(self.session_factory())

    # -- the cluster's view of this host ------------------------------------------------------------------------------
    def start(self) -> dict:
        """Join (a new epoch, devices published) and reconcile. Returns the reconcile report."""
        with self._lock:
            self._join()
            return self._reconcile()

    def _join(self) -> None:
        devs = self._read(local_devices)
        self.epoch = self.cs.join(self.name, self.address, devs)
        self.joins += 1
        log.info("joined the cluster %s as %s, epoch %d, %d device(s)", self.cs.label, self.name, self.epoch,
                 len(devs))

    def sync(self) -> dict:
        with self._lock:
            return self._guarded(self._sync)

    def _sync(self) -> dict:
        assert self.epoch is not None
        out = self.cs.sync(self.name, self.epoch, self._read(local_devices))
        for ident in out["lost"]:
            log.warning("device %s is gone from this host: lost in the cluster", ident)
        return out

    def tick(self, *, sync: bool = False) -> dict:
        """One round: heartbeat, a device sync when asked, reconcile."""
        with self._lock:
            def body() -> dict:
                assert self.epoch is not None
                self.cs.heartbeat(self.name, self.epoch)
                if sync:
                    self._sync()
                return self._reconcile()

            return self._guarded(body)

    def _guarded(self, body: Callable[[], dict]) -> dict:
        """``body``; when the cluster no longer knows this agent's epoch (fenced, or another agent joined under our
        name), join again and run it once more."""
        if self.epoch is None:
            self._join()
        try:
            return body()
        except StaleEpoch as e:
            log.warning("%s; joining the cluster again", e)
            self._join()
            return body()

    def wake(self, *, sync: bool = True) -> None:
        """Run a round now (the agent calls it after a hot-plug refresh)."""
        self._sync_wanted = self._sync_wanted or sync
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: a round every interval or when woken. A database that is away is waited for (the store
        retries for 30 s, then this loop logs and tries again next round)."""
        n = 0
        while not stop.is_set():
            n += 1
            want_sync, self._sync_wanted = self._sync_wanted or n % self.sync_every == 0, False
            try:
                if self.epoch is None:
                    self.start()
                else:
                    self.tick(sync=want_sync)
            except PassthruError as e:
                log.error("cluster round failed: %s", e)
                self._sync_wanted = self._sync_wanted or want_sync
            except Exception:  # noqa: BLE001 - the loop must outlive a surprise; it is logged whole, then retried
                log.exception("cluster round failed")
                self._sync_wanted = self._sync_wanted or want_sync
            self._wake.wait(self.interval)
            self._wake.clear()

    # -- reconcile ----------------------------------------------------------------------------------------------------
    def reconcile(self) -> dict:
        with self._lock:
            return self._guarded(self._reconcile)

    def _reconcile(self) -> dict:
        """One pass of the table in the module's docstring. Releases here come first: a device the cluster took from
        one VM may already be reserved for the next."""
        assert self.epoch is not None
        epoch = self.epoch
        mine = self._held()
        view = self.cs.host_view(self.name, epoch, list(mine.items()))
        held = {d: vm for d, vm in mine.items() if d in view["devices"]}
        report: dict = {"host": self.name, "epoch": epoch, "confirmed": [], "taken": [], "refused": [],
                        "renewed": 0, "dropped": [], "released_here": [], "adopted": [], "conflicts": []}
        live_by_dev = {a["device"]: a for a in view["live"]}
        gone: dict[tuple[str, str], list[str]] = {}  # (VM, why the cluster ended it) -> devices
        adopt: dict[str, list[str]] = {}
        disputed: set[str] = set()
        for dev, vm in sorted(held.items()):
            live = live_by_dev.get(dev)
            if live is not None and live["vm"] == vm:
                continue
            why = view["ended"].get((dev, vm))
            if why in _ENDED_HERE:
                gone.setdefault((vm, why), []).append(dev)
            elif live is not None:
                disputed.add(dev)
                report["conflicts"].append(f"{dev}: held here by VM {vm!r}, in the cluster by {live['vm']!r}")
            else:
                adopt.setdefault(vm, []).append(dev)
        for (vm, why), devs in gone.items():
            self._release_here(vm, devs, held, report, why)
        reserved: dict[str, list[dict]] = {}
        stale, keep = [], []
        expired = False
        for a in view["live"]:
            if a["state"] == "reserved":
                if a["expires"] is not None and a["expires"] >= view["now"]:
                    reserved.setdefault(a["vm"], []).append(a)
                else:
                    expired = True
            elif held.get(a["device"]) == a["vm"]:
                if a["epoch"] != epoch:
                    keep.append(a["id"])
            elif a["device"] not in disputed:  # held here by another VM: reported, left to the operator
                stale.append(a)
        if expired:
            self.cs.sweep()  # whoever notices an expired reservation frees it
        if keep:
            report["renewed"] = self.cs.renew(self.name, epoch, keep)
        if stale:
            self.cs.drop(self.name, epoch, [a["id"] for a in stale], "not held")
            report["dropped"] = sorted(f"{a['vm']}:{a['device']}" for a in stale)
            for a in stale:
                log.warning("VM %r no longer holds %s on this host: released in the cluster", a["vm"], a["device"])
        for vm, rows in reserved.items():
            self._take(vm, rows, held, report)
        for vm, devs in adopt.items():
            out = self.cs.adopt(self.name, epoch, vm, devs)
            report["adopted"] += [f"{vm}:{d}" for d in out["adopted"]]
            report["conflicts"] += out["conflicts"]
        for c in report["conflicts"]:
            log.warning("cluster and host disagree: %s", c)
        self.last = report
        return report

    def _held(self) -> dict[str, str]:
        """identity -> VM for the PCI devices a local assignment holds."""
        if self._local is None:
            s = self.session_factory()
            if not s.has_inventory():
                return {}  # nothing was ever assigned here: no database to create
            self._local = open_store(s)
        return {a.device: a.vm for a in self._local.assignments() if pci_address(a.device)}

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None

    def _take(self, vm: str, rows: list[dict], held: dict[str, str], report: dict) -> None:
        """Take ``vm``'s reserved devices over here (claim them locally and bind them to vfio-pci), then confirm.
        Nothing is left half-done: a refused takeover drops the reservation, a refused confirmation undoes the
        takeover."""
        assert self.epoch is not None
        devs = [a["device"] for a in rows]
        todo = [d for d in devs if held.get(d) != vm]
        bound: list[str] = []
        if todo:
            try:
                res = self._write(lambda s: assign(s, vm, [_spec(d) for d in todo], kernel=self.kernel))
            except PassthruError as e:
                log.warning("cannot take over %s for VM %r: %s; the reservation is dropped", ", ".join(todo), vm, e)
                self.cs.drop(self.name, self.epoch, [a["id"] for a in rows], "refused")
                report["refused"].append({"vm": vm, "devices": devs, "error": str(e)})
                return
            bound = res.bound
            for d in todo:
                held[d] = vm
            hit("cluster.taken")
        try:
            self.cs.confirm(self.name, self.epoch, vm)
        except PassthruError as e:
            log.warning("confirming VM %r failed (%s): giving its devices back", vm, e)
            if todo:
                self._release_here(vm, todo, held, report, "unconfirmed", restore=bound)
            if isinstance(e, StaleEpoch):
                raise
            self.cs.sweep()  # expired: we noticed, so we free it
            return
        report["confirmed" if not todo else "taken"].append({"vm": vm, "devices": devs})
        log.info("VM %r: %s taken over and confirmed", vm, ", ".join(devs))

    def _release_here(self, vm: str, devs: list[str], held: dict[str, str], report: dict, why: str,
                      restore: Any = False) -> None:
        try:
            self._write(lambda s: release(s, vm, [_spec(d) for d in devs], restore=restore, kernel=self.kernel))
        except PassthruError as e:
            report["conflicts"].append(f"releasing {', '.join(devs)} of VM {vm!r} here failed: {e}")
            return
        report["released_here"] += [f"{vm}:{d}" for d in devs]
        for d in devs:
            held.pop(d, None)
        log.info("VM %r: released %s on this host (%s in the cluster)", vm, ", ".join(devs), why)
