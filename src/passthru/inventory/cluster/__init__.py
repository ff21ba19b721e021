"""The cluster: many hosts' devices and an atomic scheduler on one shared database (PostgreSQL), ``passthru cluster``.

    store.py      ClusterStore: join/sync/heartbeat a host, place/confirm/release, fence, sweep, listings
    placement.py  the transaction bodies: placement (FOR UPDATE SKIP LOCKED), release, expiry, host states, sync
    records.py    ClusterDevice (what an agent publishes), name checks
    clock.py      the database's clock
"""

from __future__ import annotations

from .placement import Want, parse_want
from .records import ClusterDevice
from .store import DOWN_AFTER_S, RESERVE_TTL_S, SUSPECT_AFTER_S, ClusterStore, StaleEpoch

__all__ = ["ClusterStore", "ClusterDevice", "Want", "parse_want", "StaleEpoch", "RESERVE_TTL_S", "SUSPECT_AFTER_S",
           "DOWN_AFTER_S"]
