"""The cluster operations the faces call (``passthru cluster ...``): open the shared database, publish this host's
devices (join/sync), place and release, list hosts, devices and allocations, fence a host.

The database: ``--db URL``, else ``$PASSTHRU_DB_URL`` (the inventory's variable), else ``url`` in
``<config>/cluster.toml``. Placement itself is one transaction in ``inventory/cluster/placement.py``; here the
specs are parsed and the request checked before anything is opened, so bad input reserves nothing.
"""

from __future__ import annotations

import os
import tomllib

from ..errors import ConfigError, UsageError
from ..inventory.cluster import ClusterDevice, ClusterStore, parse_want
from ..inventory.store import DB_ENV
from .session import Session

__all__ = ["cluster_url", "open_cluster", "local_devices", "join", "sync", "place", "hosts", "devices",
           "allocations", "release", "fence", "confirm", "CONFIG_FILE"]

CONFIG_FILE = "cluster.toml"


def cluster_url(s: Session, db: str | None) -> str:
    """The cluster database's URL: ``db``, $PASSTHRU_DB_URL, or ``url`` in <config>/cluster.toml."""
    if db:
        return db
    if os.environ.get(DB_ENV):
        return os.environ[DB_ENV]
    path = s.paths.config(CONFIG_FILE)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        doc = {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e}); fix or remove it") from None
    url = doc.get("url")
    if not isinstance(url, str) or not url:
        raise UsageError(f"no cluster database: pass --db postgresql+psycopg://USER@HOST/DB, set {DB_ENV}, or put "
                         f"url = \"...\" in {path}")
    return url


def open_cluster(s: Session, db: str | None, **kw: float) -> ClusterStore:
    return ClusterStore(cluster_url(s, db), **kw)


def local_devices(s: Session) -> list[ClusterDevice]:
    """This host's PCI devices a VM could be given, as the cluster sees them: GPUs, NICs, NVMe drives and custom
    models. Left out: bridges, a GPU's audio companion (it goes with its GPU), the boot VGA (the host's console)
    and the chipset's unclassified functions (kind "other": USB and SATA controllers, SMBus...)."""
    inv = s.inventory(usb=False, serial=False)
    out = []
    for d in inv.devices:
        if d.bus != "pci" or d.kind == "bridge" or d.role == "companion" or (d.kind == "other" and not d.model):
            continue
        fn = d.fact
        if fn.is_bridge or fn.boot_vga:
            continue
        out.append(ClusterDevice(identity=f"pci:{fn.address}", kind=d.kind, model=d.model,
                                 vendor_id=fn.vendor_id, device_id=fn.device_id,
                                 numa_node=fn.numa_node if fn.numa_node >= 0 else None, switch=inv.switch_of(fn.address),
                                 iommu_group=fn.iommu_group, parent=f"pci:{fn.physfn}" if fn.physfn else None,
                                 vfio=fn.driver))
    return out


def _host_name(name: str | None) -> str:
    return name or os.uname().nodename


def join(s: Session, cs: ClusterStore, name: str | None, address: str | None) -> dict:
    """Register this host (or come back: a new epoch) and publish its devices."""
    devs = local_devices(s)
    host = _host_name(name)
    epoch = cs.join(host, address, devs)
    return {"host": host, "epoch": epoch, "devices": len(devs), "address": address}


def sync(s: Session, cs: ClusterStore, name: str | None, epoch: int) -> dict:
    host = _host_name(name)
    out = cs.sync(host, epoch, local_devices(s))
    return {"host": host, "epoch": epoch, **out}


def place(cs: ClusterStore, vm: str, specs: list[str], *, count: int = 1, same_numa: bool = False,
          same_switch: bool = False, host: str | None = None) -> dict:
    """Pick a host and devices and reserve them, in one transaction; the request is checked first."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UsageError(f"--count must be 1 or more, got {count!r}")
    if not specs:
        raise UsageError("name one or more device specs (gpu, a100, 10de:20b5)")
    wants = [parse_want(t) for t in specs]
    return cs.place(vm, wants, count=count, same_numa=same_numa, same_switch=same_switch, host=host)


def hosts(cs: ClusterStore) -> list[dict]:
    cs.sweep()
    return cs.hosts()


def devices(cs: ClusterStore, *, free: bool = False, host: str | None = None) -> list[dict]:
    cs.sweep()
    if host is not None:
        cs.host(host)  # unknown: NotFoundError
    return cs.devices(free=free, host=host)


def allocations(cs: ClusterStore, *, every: bool = False, vm: str | None = None) -> list[dict]:
    cs.sweep()
    return cs.allocations(vm=vm, live=not every)


def release(cs: ClusterStore, vm: str) -> list[dict]:
    return cs.release(vm)


def confirm(cs: ClusterStore, name: str | None, epoch: int, vm: str) -> list[dict]:
    return cs.confirm(_host_name(name), epoch, vm)


def fence(cs: ClusterStore, name: str) -> dict:
    return cs.fence(name)
