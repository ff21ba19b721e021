"""The agent's state: the inventory kept in memory, reconcile, VM liveness, counters for /metrics.

Everything here calls the same service layer as the CLI (``service.listings``, ``service.assign``, ``vfio``, ``config``,
``doctor``); the agent adds only what a long-running process needs:

- a **snapshot** of the host (one discovery, the store synced with it, the ``devices`` document serialized once),
  swapped atomically on refresh, so ``GET /devices`` is a dictionary lookup. Refreshes happen at start, after
  hot-plug bursts (``events.py``), after every write endpoint, and on reconcile. Listings other than the default
  ``devices`` document are built from the same snapshot on first use and kept until the next refresh.
- one **write lock**: writes (bind, assign, attach, model add...) run one at a time, as the CLI's do when run one
  after another. The store's transactions already make claims exclusive; the lock also keeps two takeovers from
  meeting at vfio's state lock (which refuses a second writer instead of waiting).
- **reconcile**: the same reconcile as ``passthru reconcile`` (``service/reconcile.py``: interrupted group
  takeovers and assign/release operations settled, assigned devices checked against their drivers) plus what
  ``--persist`` recorded (``vfio.apply_boot``), persisted vGPU instances re-created when the vGPU module offers it,
  the inventory synced (devices gone from the host become ``lost`` and stay listed, with the VM holding them), and
  every VM holding devices checked for a QEMU process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ..service import vgpu as mdev
from ..service.session import Session
from ..service.listings import devices_doc, groups_doc, serial_doc, usb_doc
from ..errors import PassthruError, UsageError
from ..service.assign import open_store, sync
from ..service.release import release
from ..service.reconcile import reconcile as settle
from .events import HotplugEvent, Watcher
from .vms import vm_processes

__all__ = ["Agent", "Snapshot", "iso_now"]

log = logging.getLogger("passthru.agent")
ACTIONS = frozenset({"add", "remove", "change", "move", "online", "offline", "bind", "unbind"})  # kernel uevents


def iso_now(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class PinnedSession(Session):
    """A Session whose inventory is one snapshot's: every listing of a refresh sees the same host."""

    def __init__(self, base: Session, inv: Any, namer: Any) -> None:  # noqa: D107 - no super(): nothing to re-read
        self.host, self.paths = base.host, base.paths
        self._models = base.models()
        self._namer = namer
        self._inv = inv

    def inventory(self, **kw: Any) -> Any:
        return self._inv


@dataclass(slots=True)
class Snapshot:
    generation: int
    time: float
    session: PinnedSession
    rows: list[dict]  # the store's devices after the sync (state present | lost, holder)
    docs: dict[Any, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lost(self, kind: str | None = None) -> list[dict]:
        return [lost_json(r) for r in self.rows if r["state"] == "lost"
                and (kind is None or r["kind"] in (kind, f"{kind}-companion"))]


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:04x}"


def lost_json(r: dict) -> dict:
    """A device the store knows and the host no longer shows: reported, never silently dropped."""
    return {"identity": r["identity"], "bus": r["bus"], "kind": r["kind"], "vendor": _hex(r["vendor_id"]),
            "device": _hex(r["device_id"]), "serial": r["serial"], "name": r["name"], "numa_node": r["numa_node"],
            "iommu_group": r["iommu_group"], "first_seen": r["first_seen"], "last_seen": r["last_seen"],
            "held_by": r.get("vm"), "assignment": r.get("assignment")}


def _diff(before: dict[str, dict], after: list[dict]) -> dict:
    """What a sync changed, from the store's rows before and after it: added, lost, back (present again),
    replaced (other IDs under the same identity) and moved (a USB device now in another port)."""
    added, lost, back, replaced = [], [], [], []
    now = {r["identity"]: r for r in after}
    for ident, r in now.items():
        old = before.get(ident)
        if old is None:
            added.append(ident)
        elif old["state"] == "present" and r["state"] == "lost":
            lost.append(ident)
        elif old["state"] == "lost" and r["state"] == "present":
            back.append(ident)
        if old is not None and r["state"] == "present" and (old["vendor_id"], old["device_id"], old["serial"]) != (
                r["vendor_id"], r["device_id"], r["serial"]):
            replaced.append({"identity": ident, "old": f"{_hex(old['vendor_id'])}:{_hex(old['device_id'])}",
                             "new": f"{_hex(r['vendor_id'])}:{_hex(r['device_id'])}", "held_by": r.get("vm")})
    moved = []
    fresh = [now[i] for i in added + back if now[i]["bus"] == "usb"]
    for ident in lost:
        r = now[ident]
        if r["bus"] != "usb" or r["vendor_id"] is None:
            continue
        same = [n for n in fresh if (n["vendor_id"], n["device_id"], n["serial"]) ==
                (r["vendor_id"], r["device_id"], r["serial"])]
        if len(same) == 1:
            moved.append({"from": ident, "to": same[0]["identity"], "ids": f"{_hex(r['vendor_id'])}:"
                          f"{_hex(r['device_id'])}", "serial": r["serial"], "held_by": r.get("vm")})
    return {"added": sorted(added), "lost": sorted(lost), "back": sorted(back), "replaced": replaced, "moved": moved}


@dataclass(slots=True)
class Counters:
    errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, code) -> n
    requests: dict[tuple[str, int], int] = field(default_factory=dict)  # (method, status) -> n
    events: dict[tuple[str, str], int] = field(default_factory=dict)  # (subsystem, action) -> n
    refreshes: int = 0
    refresh_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, table: dict, key: tuple, n: int = 1) -> None:
        with self.lock:
            table[key] = table.get(key, 0) + n


class Agent:
    """One host's agent. ``session_factory`` returns a fresh :class:`Session` (host root, paths); ``kernel`` is
    handed to every takeover (tests pass a fake kernel for fixture roots; None: the real one)."""

    def __init__(self, session_factory: Callable[[], Session], *, kernel: Any = None, release_gone: bool = False,
                 event_source: Any = None, debounce: float = 0.2, max_delay: float = 2.0) -> None:
        self.session_factory = session_factory
        first = session_factory()
        self.host, self.paths = first.host, first.paths
        self.kernel = kernel
        self.release_gone = release_gone
        self.write_lock = threading.RLock()
        self.counters = Counters()
        self.changes: deque[dict] = deque(maxlen=200)
        self.last_reconcile: dict | None = None
        self.started = time.time()
        self.connections: Any = None  # the server's limits.Connections, when served (for /metrics)
        self.membership: Any = None  # membership.Membership with --cluster
        self._namer = first.namer()
        self._refresh_lock = threading.Lock()
        self._start_lock = threading.RLock()
        self._snap: Snapshot | None = None
        self._store: Any = None
        self._seen_running: set[str] = set()
        self._source = event_source
        self._watcher: Watcher | None = None
        self._debounce, self._max_delay = debounce, max_delay
        self._ready = False

    # -- life cycle -----------------------------------------------------------------------------------------------
    def start(self, *, reconcile: bool = True) -> None:
        """First snapshot, reconcile (when asked), then hot-plug events. Idempotent."""
        with self._start_lock:
            if self._ready:
                return
            try:
                if reconcile:
                    self.reconcile(reason="start")
                else:
                    self.refresh("start")
            except PassthruError as e:  # e.g. a broken models.toml: serve, and answer with the error until fixed
                log.error("the first inventory failed: %s", e)
            src = self._source
            if isinstance(src, type) or (src is not None and not hasattr(src, "poll")):
                try:
                    src = src()  # e.g. UdevSource: the netlink socket opens now
                except Exception as e:  # noqa: BLE001 - no events: the agent still serves, refreshing on writes
                    log.warning("hot-plug events unavailable (%s); the inventory refreshes on writes and "
                                "reconcile only", e)
                    src = None
            if src is not None and self._watcher is None:
                self._watcher = Watcher(src, self._on_events, debounce=self._debounce, max_delay=self._max_delay)
                self._watcher.start()
            self._ready = True

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> Any:
        if self._store is None:
            self._store = open_store(self.session_factory())
        return self._store

    def kernel_for(self, cls: type) -> Any:
        """The injected kernel when it can do this job (a test double for fixture roots), else None (the real
        one): a fake takeover kernel is no mdev or SR-IOV kernel."""
        return self.kernel if isinstance(self.kernel, cls) else None

    def session(self) -> Session:
        s = self.session_factory()
        s._namer = self._namer
        return s

    # -- the snapshot ---------------------------------------------------------------------------------------------
    @property
    def current(self) -> Snapshot | None:
        """The snapshot as it is now, without building one (None before the first)."""
        return self._snap

    def snapshot(self) -> Snapshot:
        snap = self._snap
        if snap is None:
            self.start(reconcile=False)
            if self._snap is None:  # the first inventory failed: try again, raising what stops it
                self.refresh("retry")
            snap = self._snap
            assert snap is not None
        return snap

    def refresh(self, reason: str) -> dict:
        """Discover the host, sync the store with it, and swap in the new snapshot. Returns what changed."""
        with self._refresh_lock:
            t0 = time.monotonic()
            base = self.session()
            inv = base.inventory()
            pinned = PinnedSession(base, inv, self._namer)
            change: dict = {"added": [], "lost": [], "back": [], "replaced": [], "moved": []}
            rows: list[dict] = []
            try:
                before = {r["identity"]: r for r in self.store.devices()}
                sync(pinned, self.store)
                rows = self.store.devices()
                change = _diff(before, rows)
            except PassthruError as e:  # the listing still works without the store
                log.error("inventory sync failed (%s): %s", reason, e)
                self.counters.add(self.counters.errors, ("sync", type(e).__name__))
                rows = self._snap.rows if self._snap is not None else []
            gen = (self._snap.generation if self._snap is not None else 0) + 1
            snap = Snapshot(gen, time.time(), pinned, rows)
            snap.docs[("devices", None)] = dumps({**devices_doc(pinned), "lost": snap.lost()})
            self._snap = snap
            took = time.monotonic() - t0
            with self.counters.lock:
                self.counters.refreshes += 1
                self.counters.refresh_seconds = took
        if any(change[k] for k in change):
            if self.membership is not None:
                self.membership.changed(change)  # the cluster hears of it too
            entry = {"time": iso_now(snap.time), "reason": reason, "generation": gen, **change}
            self.changes.append(entry)
            for ident in change["lost"]:
                held = next((r.get("vm") for r in rows if r["identity"] == ident), None)
                log.warning("device %s is gone from the host (marked lost%s)", ident,
                            f"; VM {held!r} holds it" if held else "")
            for m in change["moved"]:
                log.warning("USB device %s moved from %s to %s%s", m["ids"], m["from"], m["to"],
                            f"; VM {m['held_by']!r} holds the old port" if m["held_by"] else "")
        return change

    def doc(self, key: Any) -> tuple[Snapshot, bytes]:
        """A listing of the current snapshot, built on first use: ("devices", kind), "groups", "usb", "serial"."""
        snap = self.snapshot()
        got = snap.docs.get(key)
        if got is not None:
            return snap, got
        with snap.lock:
            got = snap.docs.get(key)
            if got is None:
                s = snap.session
                if isinstance(key, tuple):
                    doc = {**devices_doc(s, key[1]), "lost": snap.lost(key[1])}
                else:
                    doc = {"groups": groups_doc, "usb": usb_doc, "serial": serial_doc}[key](s)
                got = snap.docs[key] = dumps(doc)
        return snap, got

    def _on_events(self, events: list[HotplugEvent]) -> None:
        for ev in events:  # labels of /metrics: the kernel's own actions, anything else folded into "other"
            self.counters.add(self.counters.events, (ev.subsystem, ev.action if ev.action in ACTIONS else "other"))
        first = events[0]
        self.refresh(f"hot-plug: {len(events)} event(s), first {first.action} {first.subsystem} {first.name}")

    # -- writes ---------------------------------------------------------------------------------------------------
    def write(self, fn: Callable[[Session], Any], *, refresh: str | None = None) -> Any:
        """Run one write with the write lock held, then refresh the snapshot (also after a failure: a rolled
        back takeover may still have moved drivers and back)."""
        with self.write_lock:
            try:
                return fn(self.session())
            finally:
                if refresh:
                    try:
                        self.refresh(refresh)
                    except Exception:  # noqa: BLE001 - the write's own result or error matters more
                        log.exception("refresh after %s failed", refresh)

    # -- VMs ------------------------------------------------------------------------------------------------------
    def vm_status(self) -> dict[str, dict]:
        """Per VM holding devices: running (a QEMU process with its name or UUID) or not, and whether it was seen
        running before (by this agent) or had devices hot-plugged: then it is "gone", else "not_running"."""
        procs = vm_processes(self.host)
        names = {p.name: p.pid for p in procs if p.name}
        uuids = {p.uuid: p.pid for p in procs if p.uuid}
        out: dict[str, dict] = {}
        for a in self.store.assignments():
            v = out.setdefault(a.vm, {"vm": a.vm, "vm_uuid": a.vm_uuid, "devices": [], "attached": False})
            v["devices"].append(a.device)
            v["vm_uuid"] = v["vm_uuid"] or a.vm_uuid
            v["attached"] = v["attached"] or a.state == "attached"
        for vm, v in out.items():
            pid = names.get(vm) or (uuids.get(v["vm_uuid"].lower()) if v["vm_uuid"] else None)
            v["pid"] = pid
            if pid:
                self._seen_running.add(vm)
                v["status"] = "running"
            elif vm in self._seen_running or v.pop("attached"):
                v["status"] = "gone"
            else:
                v["status"] = "not_running"
            v.pop("attached", None)
        return out

    # -- reconcile ------------------------------------------------------------------------------------------------
    def reconcile(self, *, release_gone: bool | None = None, reason: str = "on demand") -> dict:
        release_gone = self.release_gone if release_gone is None else release_gone
        with self.write_lock:
            t0 = time.time()
            errors: list[str] = []
            report: dict[str, Any] = {"schema": 1, "reason": reason, "started": iso_now(t0)}
            try:  # the CLI's reconcile, plus what --persist recorded (what passthru-apply-boot.service does)
                doc = settle(self.session(), kernel=self.kernel, apply_persisted=True)
                report["bindings"] = doc
                if doc["error"]:
                    errors.append(doc["error"])
            except UsageError as e:  # a fixture or captured root: no kernel to re-apply anything to
                report["bindings"] = {"skipped": str(e)}
            except PassthruError as e:
                report["bindings"] = {"error": str(e)}
                errors.append(str(e))
            report["vgpu"] = self._reapply_vgpu(errors)
            vms = []
            try:
                for v in self.vm_status().values():
                    v["released"] = False
                    if v["status"] == "gone" and release_gone:
                        try:
                            release(self.session(), v["vm"])
                            v["released"] = True
                            self._seen_running.discard(v["vm"])
                            log.warning("VM %r is gone: released %s", v["vm"], ", ".join(v["devices"]))
                        except PassthruError as e:
                            errors.append(f"releasing VM {v['vm']!r}: {e}")
                    elif v["status"] == "gone":
                        log.warning("VM %r is gone but holds %s (release it, or serve with --release-gone)",
                                    v["vm"], ", ".join(v["devices"]))
                    vms.append(v)
            except PassthruError as e:
                errors.append(f"checking VMs: {e}")
            report["vms"] = vms
            try:
                report["inventory"] = self.refresh(f"reconcile ({reason})")
            except PassthruError as e:
                errors.append(f"inventory: {e}")
                report["inventory"] = None
            report["lost"] = self._snap.lost() if self._snap is not None else []
            report["errors"] = errors
            report["ok"] = not errors
            report["duration_s"] = round(time.time() - t0, 6)
            self.last_reconcile = report
            for e in errors:
                self.counters.add(self.counters.errors, ("reconcile", "error"))
                log.error("reconcile: %s", e)
            return report

    def _reapply_vgpu(self, errors: list[str]) -> dict | None:
        """Re-create persisted vGPU (mdev) instances that are not live (``passthru vgpu start-persisted``)."""
        try:
            out = mdev.start_persisted(self.host, self.paths, kernel=self.kernel_for(mdev.MdevKernel))
        except UsageError as e:  # a fixture or captured root
            return {"skipped": str(e)}
        except PassthruError as e:
            errors.append(f"vgpu: {e}")
            return {"error": str(e)}
        if out.error:
            errors.append(f"vgpu: {out.error}")
        return out.to_json()
