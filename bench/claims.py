#!/usr/bin/env python3
"""Claim throughput and exclusivity: P processes loop claim_any(kind="gpu") -> release on one SQLite inventory.

Measured in the same run, same process count, same duration, same SQLite settings (WAL, synchronous=NORMAL,
busy_timeout, BEGIN IMMEDIATE):
  baseline  raw sqlite3: the minimal protocol (BEGIN IMMEDIATE; SELECT a device with no active assignment; INSERT;
            COMMIT / BEGIN IMMEDIATE; UPDATE to released; COMMIT) on the same assignments table shape and partial
            unique index, without SQLAlchemy, without the PF/VF and IOMMU-group checks and without audit rows.
  passthru  passthru.inventory.Store: claim_any + release (both audited).
Prints claims/s for each and the ratio passthru/baseline.

Double assignments are looked for two independent ways, for both runs:
  live      a shared per-device holder counter, incremented after a claim returns and decremented before the
            release is sent; a second holder while the first still believes it holds the device shows as 2. It
            only sees doubles inside that window (widen it with --hold-ms); the post-hoc scan sees all of them.
  post-hoc  every assignment row is kept (released ones too); per device, each row's [created, released] interval
            must end before the next one starts. Times are taken inside the write transaction.
The post-hoc detector is checked first on a fabricated overlapping pair (it must find 1); --check-detectors also
runs a deliberately broken loop (pick outside the transaction, no unique index) where both must find doubles.

Usage: python bench/claims.py [--seconds 10] [--procs 8] [--devices 20] [--hold-ms 0] [--no-single]
                              [--check-detectors]
Contended variant (fewer devices than processes, so most attempts get "no free device" and retry at once):
       python bench/claims.py --devices 4 --hold-ms 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from passthru.inventory import ClaimError, DeviceRecord, Store  # noqa: E402

RAW_SCHEMA = """
CREATE TABLE devices (identity TEXT PRIMARY KEY, kind TEXT NOT NULL);
CREATE TABLE assignments (id INTEGER PRIMARY KEY AUTOINCREMENT, vm TEXT NOT NULL, device TEXT NOT NULL
    REFERENCES devices(identity), state TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, released TEXT);
CREATE UNIQUE INDEX uq_active ON assignments (device) WHERE state IN ('reserved', 'attached');
CREATE INDEX ix_dev_state ON assignments (device, state);
"""
RAW_PICK = ("SELECT identity FROM devices d WHERE kind = 'gpu' AND NOT EXISTS (SELECT 1 FROM assignments a "
            "WHERE a.device = d.identity AND a.state IN ('reserved', 'attached')) ORDER BY identity LIMIT 1")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ident(i: int) -> str:
    return f"pci:0000:{(i >> 3) + 1:02x}:{i & 7:02x}.0"


# -- the two loops -----------------------------------------------------------------------------------------------
class RawStore:
    def __init__(self, path: str, toctou: bool = False) -> None:
        self.toctou = toctou  # deliberately broken: pick outside the transaction (for --check-detectors)
        self.c = sqlite3.connect(path, timeout=30, isolation_level=None)
        for p in ("busy_timeout=30000", "foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL"):
            self.c.execute(f"PRAGMA {p}")

    def claim(self, vm: str) -> str:
        c = self.c
        early = c.execute(RAW_PICK).fetchone() if self.toctou else None
        c.execute("BEGIN IMMEDIATE")
        try:
            row = early if self.toctou else c.execute(RAW_PICK).fetchone()
            if row is None:
                raise ClaimError("no free device")
            ts = now()
            c.execute("INSERT INTO assignments (vm, device, state, created, updated) VALUES (?, ?, 'reserved', ?, ?)",
                      (vm, row[0], ts, ts))
            c.execute("COMMIT")
            return row[0]
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def release(self, vm: str, device: str) -> None:
        c = self.c
        c.execute("BEGIN IMMEDIATE")
        ts = now()
        c.execute("UPDATE assignments SET state = 'released', updated = ?, released = ? WHERE vm = ? AND device = ? "
                  "AND state IN ('reserved', 'attached')", (ts, ts, vm, device))
        c.execute("COMMIT")


def worker(mode: str, path: str, n: int, seconds: float, hold: float, barrier, holders, results) -> None:
    vm = f"vm{n}"
    if mode in ("raw", "toctou"):
        raw = RawStore(path, toctou=mode == "toctou")
        claim, release = (lambda: raw.claim(vm)), (lambda d: raw.release(vm, d))
    else:
        store = Store(f"sqlite:///{path}")
        store.migrate()
        claim = lambda: store.claim_any(vm, kind="gpu").device  # noqa: E731
        release = lambda d: store.release(vm, d)  # noqa: E731
    index = {ident(i): i for i in range(len(holders))}
    claims = nofree = live_doubles = 0
    errors: list[str] = []
    barrier.wait()
    t0 = time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        try:
            dev = claim()
        except ClaimError:
            nofree += 1
            continue
        except Exception as e:  # noqa: BLE001 - counted and shown
            errors.append(f"{type(e).__name__}: {e}")
            continue
        claims += 1
        i = index[dev]
        with holders.get_lock():
            holders[i] += 1
            if holders[i] > 1:
                live_doubles += 1
        if hold:
            time.sleep(hold)
        with holders.get_lock():
            holders[i] -= 1
        release(dev)
    results.put((n, claims, nofree, live_doubles, errors[:3], len(errors), time.monotonic() - t0))


# -- post-hoc check ------------------------------------------------------------------------------------------------
def overlaps(rows: list[tuple[str, str, str | None]]) -> int:
    """rows: (device, created, released or None). Count pairs of one device's holdings that overlap in time."""
    by_dev: dict[str, list[tuple[str, str | None]]] = {}
    for dev, created, released in rows:
        by_dev.setdefault(dev, []).append((created, released))
    bad = 0
    for spans in by_dev.values():
        spans.sort()
        end = None  # the latest end so far; "" stands for still active
        for created, released in spans:
            if end is not None and (end == "" or created < end):
                bad += 1
            if released is None:
                end = ""
            elif end != "":
                end = max(end or released, released)
    return bad


def scan(path: str) -> tuple[int, int, int]:
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT device, created, released FROM assignments").fetchall()
        active = c.execute("SELECT count(*) FROM assignments WHERE state IN ('reserved', 'attached')").fetchone()[0]
    return len(rows), overlaps(rows), active


# -- one run -------------------------------------------------------------------------------------------------------
def run(mode: str, tmp: str, procs: int, devices: int, seconds: float, hold: float) -> dict:
    path = os.path.join(tmp, f"{mode}-{procs}.db")
    if mode in ("raw", "toctou"):
        with sqlite3.connect(path) as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(RAW_SCHEMA if mode == "raw" else RAW_SCHEMA.replace("UNIQUE INDEX", "INDEX"))
            c.executemany("INSERT INTO devices VALUES (?, 'gpu')", [(ident(i),) for i in range(devices)])
    else:
        s = Store(f"sqlite:///{path}")
        s.sync_devices([DeviceRecord(ident(i), "pci", "gpu", 0x10DE, 0x2204, numa_node=i % 2, iommu_group=i)
                        for i in range(devices)])
        s.close()
    ctx = mp.get_context("fork")
    barrier, results, holders = ctx.Barrier(procs), ctx.Queue(), ctx.Array("i", devices)
    ps = [ctx.Process(target=worker, args=(mode, path, n, seconds, hold, barrier, holders, results))
          for n in range(procs)]
    for p in ps:
        p.start()
    out = [results.get(timeout=seconds + 120) for _ in ps]
    for p in ps:
        p.join()
    rows, doubles, active = scan(path)
    claims = sum(o[1] for o in out)
    wall = max(o[6] for o in out)
    return {"mode": mode, "procs": procs, "claims": claims, "per_s": claims / wall, "nofree": sum(o[2] for o in out),
            "live_doubles": sum(o[3] for o in out), "posthoc_doubles": doubles, "rows": rows, "active_left": active,
            "errors": sum(o[5] for o in out), "error_samples": [e for o in out for e in o[4]][:3],
            "spread": sorted(o[1] for o in out)}


def show(r: dict, label: str) -> None:
    print(f"{label:<34}: {r['per_s']:8.0f} claims/s  ({r['claims']} claims+releases by {r['procs']} procs; "
          f"per process min/max {r['spread'][0]}/{r['spread'][-1]}; 'no free device' {r['nofree']}; "
          f"other errors {r['errors']})")
    print(f"{'':<34}  doubles: live {r['live_doubles']}, post-hoc {r['posthoc_doubles']} over {r['rows']} rows; "
          f"active at end {r['active_left']}")
    for e in r["error_samples"]:
        print(f"{'':<34}  error: {e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each measured run (default 10)")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--hold-ms", type=float, default=0.0,
                    help="sleep this long while holding each device (widens the live detector's window)")
    ap.add_argument("--check-detectors", action="store_true",
                    help="first run a deliberately broken raw loop (pick outside the transaction, no unique index) "
                         "for 2 s: both detectors must report doubles")
    ap.add_argument("--no-single", action="store_true", help="skip the informational 1-process passthru run")
    args = ap.parse_args()
    fake = [("d", "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:02.000000Z"),
            ("d", "2026-01-01T00:00:01.000000Z", None), ("e", "2026-01-01T00:00:00.000000Z", None)]
    assert overlaps(fake) == 1, "post-hoc detector self-check failed"
    print(f"post-hoc detector self-check: ok (finds the fabricated overlap); sqlite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs, {args.procs} processes, {args.devices} gpu devices, {args.seconds:g} s per run")
    with tempfile.TemporaryDirectory(prefix="passthru-bench-claims-") as tmp:
        hold = args.hold_ms / 1000
        if args.check_detectors:
            broken = run("toctou", tmp, args.procs, args.devices, 2.0, max(hold, 0.0005))
            show(broken, "BROKEN raw loop (detector check)")
            if not (broken["live_doubles"] and broken["posthoc_doubles"]):
                print("detector check FAILED: a broken loop went unnoticed", file=sys.stderr)
                return 1
        base = run("raw", tmp, args.procs, args.devices, args.seconds, hold)
        ours = run("store", tmp, args.procs, args.devices, args.seconds, hold)
        single = None if args.no_single else run("store", tmp, 1, args.devices, args.seconds, hold)
    show(base, "raw sqlite3 (baseline)")
    show(ours, "passthru Store")
    if single:
        show(single, "passthru Store, 1 process (info)")
    doubles = sum(r["live_doubles"] + r["posthoc_doubles"] for r in (base, ours, single) if r)
    print(f"ratio passthru/raw sqlite3          : {ours['per_s'] / base['per_s']:.2f}x")
    print(f"target >= 1000 claims/s, 0 doubles  : {'met' if ours['per_s'] >= 1000 and doubles == 0 else 'NOT met'} "
          f"({ours['per_s']:.0f}/s, {doubles} doubles)")
    return 1 if doubles or ours["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
