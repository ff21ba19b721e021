"""The inventory: devices the host has, custom models, which VM holds which device (atomic claims), and an audit
trail, in one database (SQLite by default at ``<state_dir>/passthru.db``; PostgreSQL by URL or
``$PASSTHRU_DB_URL``).

    store.py    Store (the API)
    base.py     Assignment, ClaimError, InvalidState, timestamps, audit rows
    sync.py     DeviceRecord (what discovery feeds in) and the devices upsert
    claims.py   exclusivity rules: one holder per device, PF/VF (and mdev parent) exclusivity, IOMMU groups
    schema.py   tables and versioned migrations
    engine.py   transactions: SQLite BEGIN IMMEDIATE + WAL; PostgreSQL SERIALIZABLE with retries; damaged databases as one line
    health.py   expected schema per version, the backup before a migration, `passthru store check`
"""

from __future__ import annotations

from .store import DB_ENV, STATES, Assignment, ClaimError, InvalidState, Store
from .sync import DeviceRecord

__all__ = ["Store", "DeviceRecord", "Assignment", "ClaimError", "InvalidState", "DB_ENV", "STATES"]
