"""The NIC kind's records under ``<state>/sriov/``: a PF's prior VF count, autoprobe and eswitch mode, and a VF's
prior settings, written before the host is touched (journal first)."""

from __future__ import annotations

import json
import os
import time

from ...config import Paths
from ...host.sriov import PfRef
from ...statefs import FileLock, caller, fsync_dir, read_record, write_atomic
from ...vfio.state import Holdings

__all__ = ["SriovStore"]

_SCHEMA = 1


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SriovStore:
    """Records under ``<state>/sriov/``: ``<pf>.json`` (prior VF count, autoprobe, eswitch mode of a PF passthru
    changed) and ``<pf>.vf<N>.json`` (prior settings of a VF passthru configured). Written atomically, before the
    host is touched; audit lines go to the shared ``<state>/audit.log``."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.dir = os.path.join(paths.state_dir, "sriov")

    def lock(self) -> FileLock:
        return FileLock(os.path.join(self.paths.state_dir, "sriov.lock"), "SR-IOV change (passthru vf ...)")

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name + ".json")

    def _load(self, name: str) -> dict | None:
        return read_record(self._path(name), "move it away and retry")

    def _save(self, name: str, doc: dict) -> dict:
        doc = {"schema": _SCHEMA, **doc, "since": doc.get("since") or _now(), "by": doc.get("by") or caller()}
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        write_atomic(self._path(name), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), 0o600)
        return doc

    def _drop(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            return
        fsync_dir(self.dir)

    def pf(self, pf: PfRef) -> dict | None:
        return self._load(pf.key)

    def save_pf(self, pf: PfRef, doc: dict) -> dict:
        return self._save(pf.key, {**doc, **pf.to_json()})

    def drop_pf(self, pf: PfRef) -> None:
        self._drop(pf.key)

    def vf(self, pf: PfRef, index: int) -> dict | None:
        return self._load(f"{pf.key}.vf{index}")

    def save_vf(self, pf: PfRef, index: int, doc: dict) -> dict:
        return self._save(f"{pf.key}.vf{index}", {**doc, **pf.to_json(), "vf": index})

    def drop_vf(self, pf: PfRef, index: int) -> None:
        self._drop(f"{pf.key}.vf{index}")

    def vfs(self, pf: PfRef) -> dict[int, dict]:
        """VF index -> its settings record, for one PF."""
        out = {}
        prefix = pf.key + ".vf"
        for name in sorted(_listdir(self.dir)):
            if name.startswith(prefix) and name.endswith(".json") and name[len(prefix):-5].isdigit():
                doc = self._load(name[:-5])
                if doc is not None:
                    out[int(name[len(prefix):-5])] = doc
        return out

    def audit(self, action: str, device: str, before: object, after: object, **extra: object) -> None:
        Holdings(self.paths).audit(action, device, before, after, **extra)


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []
