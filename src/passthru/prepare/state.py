"""The state ``passthru prepare --apply``/``--rollback`` keep under ``<state_dir>``: atomic file writes, the
lock (one apply or rollback at a time), the backup sets with their manifests, and the reboot flag
(:func:`pending_reboot`, which ``passthru doctor`` reads)."""

from __future__ import annotations

import hashlib
import json
import os
import time

from ..config import Paths
from ..host.boot import read_proc_cmdline
from ..host.root import HostRoot
from ..statefs import FileLock, fsync_dir as _fsync_dir, write_atomic as _write_atomic
from .args import missing_args

REBOOT_FLAG = "reboot-required"


# -- files, backups, state --------------------------------------------------------------------------------------
def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _Lock(paths: Paths) -> FileLock:
    """An exclusive lock on <state_dir>/prepare.lock: one apply/rollback at a time."""
    return FileLock(os.path.join(paths.state_dir, "prepare.lock"), "passthru prepare --apply/--rollback")


def _backups_dir(paths: Paths) -> str:
    return os.path.join(paths.state_dir, "backups")


def _backup_sets(paths: Paths) -> list[tuple[str, dict]]:
    """(directory, manifest) of every backup set, oldest first."""
    base = _backups_dir(paths)
    out = []
    for name in HostRoot.listdir(base):
        try:
            with open(os.path.join(base, name, "manifest.json"), encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(m, dict):
            out.append((os.path.join(base, name), m))
    return sorted(out, key=lambda s: (s[1].get("seq", 0), s[0]))


def _save_manifest(bdir: str, manifest: dict) -> None:
    _write_atomic(os.path.join(bdir, "manifest.json"), _encode(json.dumps(manifest, indent=2) + "\n"), 0o600)


def _new_backup_set(paths: Paths, now: float) -> tuple[str, int]:
    base = _backups_dir(paths)
    os.makedirs(base, mode=0o700, exist_ok=True)
    seq = max((m.get("seq", 0) for _, m in _backup_sets(paths)), default=0) + 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    name, n = stamp, 1
    while True:
        try:
            os.mkdir(os.path.join(base, name), 0o700)
            return os.path.join(base, name), seq
        except FileExistsError:
            n += 1
            name = f"{stamp}-{n}"


def _boot_id(h: HostRoot) -> str | None:
    return h.read(h.proc + "/sys/kernel/random/boot_id") or None


def _flag_path(paths: Paths) -> str:
    return os.path.join(paths.state_dir, REBOOT_FLAG)


def _write_flag(h: HostRoot, paths: Paths, action: str, args: list[str], bdir: str, now: float) -> None:
    doc = {"action": action, "args": args, "backup": bdir, "boot_id": _boot_id(h),
           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    _write_atomic(_flag_path(paths), _encode(json.dumps(doc, indent=2) + "\n"), 0o644)


def pending_reboot(h: HostRoot, paths: Paths) -> bool | None:
    """Whether boot configuration passthru wrote is still waiting for a reboot. False: no flag (nothing written,
    or only files that need no reboot), or the flag is from an earlier boot (the boot_id changed). True: written
    during this boot. Without a boot_id (a capture), an apply is pending while /proc/cmdline lacks its
    arguments. None: cannot tell (an unreadable flag; a rollback flag without boot_id)."""
    path = _flag_path(paths)
    if not os.path.exists(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            flag = json.load(f)
        args = [str(a) for a in flag.get("args", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    now_id, then_id = _boot_id(h), flag.get("boot_id")
    if now_id and then_id:
        return now_id == then_id
    if flag.get("action") == "apply":
        running = read_proc_cmdline(h)
        return None if running is None else bool(missing_args(running, args))
    return None


def _clear_stale_flag(h: HostRoot, paths: Paths) -> None:
    if h.is_live and pending_reboot(h, paths) is False and os.path.exists(_flag_path(paths)):
        try:
            os.unlink(_flag_path(paths))
        except OSError:
            pass
