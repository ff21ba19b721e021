"""Carrying out a plan of ``passthru prepare``: the command runner (never a shell; tests pass a fake),
:func:`apply_plan` (backup, atomic writes, regenerate, reboot flag; everything restored on a failure),
:func:`rollback` (restore the newest applied backup set) and the result as text (:func:`format_result`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..config import Paths
from ..errors import HostError, UsageError
from ..host.boot import read_text
from ..host.root import HostRoot
from .early import REBUILDS
from .plan import _SCHEMA, Plan, _cmd
from .state import (_Lock, _backup_sets, _backups_dir, _clear_stale_flag, _encode, _fsync_dir, _new_backup_set,
                    _save_manifest, _sha, _write_atomic, _write_flag)

COMMAND_TIMEOUT = 600.0  # update-grub probes every disk (os-prober); kernel-install may rebuild an initramfs


# -- running commands -------------------------------------------------------------------------------------------
class Runner:
    """Runs one external command: ``run(argv, timeout) -> (returncode, stdout, stderr)``. A missing program is
    returncode 127, a timeout 124 (or the exceptions FileNotFoundError / TimeoutError from a custom runner)."""

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:  # pragma: no cover - interface
        raise NotImplementedError


class SubprocessRunner(Runner):
    """The real runner: an argument list (never a shell), stdin closed, a timeout, sbin directories on PATH
    (update-grub and grub2-mkconfig live there and sudo's PATH may lack them)."""

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        import subprocess

        env = dict(os.environ)
        path = env.get("PATH", "/usr/bin:/bin").split(":")
        env["PATH"] = ":".join(path + [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in path])
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                               timeout=timeout, env=env, check=False)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: command not found"
        except subprocess.TimeoutExpired:
            return 124, "", f"{argv[0]}: timed out after {timeout:g} s"
        except OSError as e:
            return 126, "", f"{argv[0]}: {e.strerror}"
        return p.returncode, p.stdout, p.stderr


def _pick_runner(h: HostRoot, runner: Runner | None) -> Runner | None:
    """The runner to use; None means "skip the commands" (a root other than / without an explicit runner)."""
    if runner is None:
        return SubprocessRunner() if h.is_live else None
    if type(runner) is SubprocessRunner and not h.is_live:
        raise UsageError(f"refusing to run boot commands on this machine for the host root {h.base}; they would "
                         "change this machine, not that root (run passthru inside it, or chroot)")
    return runner


def _run(runner: Runner, argv: list[str], timeout: float) -> tuple[int, str]:
    """(returncode, the last non-empty stderr line or a description)."""
    try:
        rc, out, err = runner.run(list(argv), timeout)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except TimeoutError:
        return 124, f"{argv[0]}: timed out after {timeout:g} s"
    except OSError as e:
        return 126, f"{argv[0]}: {e.strerror or e}"
    except Exception as e:  # subprocess.TimeoutExpired from a custom runner, without importing subprocess
        if type(e).__name__ == "TimeoutExpired":
            return 124, f"{argv[0]}: timed out after {timeout:g} s"
        raise
    lines = [ln.strip() for ln in (err or "").splitlines() if ln.strip()]
    lines = lines or [ln.strip() for ln in (out or "").splitlines() if ln.strip()]
    return rc, lines[-1] if lines else ""


# -- apply and rollback -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyResult:
    action: str  # "apply" | "rollback"
    status: str  # "changed" | "unchanged" (apply), "restored" (rollback)
    reboot_needed: bool
    backup_dir: str | None
    files: list[str]  # host paths written (apply) or restored/removed (rollback)
    commands_run: list[list[str]]
    commands_skipped: list[list[str]]  # a host root other than / without an explicit runner
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": _SCHEMA, "action": self.action, "status": self.status,
                "reboot_needed": self.reboot_needed, "backup_dir": self.backup_dir, "files": list(self.files),
                "commands_run": [list(c) for c in self.commands_run],
                "commands_skipped": [list(c) for c in self.commands_skipped], "notes": list(self.notes)}


def _snapshot(h: HostRoot, path: str) -> tuple[bytes | None, os.stat_result | None]:
    p = h.path(path)
    try:
        st = os.stat(p)
    except OSError:
        return None, None
    data = h.read_bytes(p)
    if data is None:
        raise HostError(f"cannot read {path} to back it up; run as root")
    return data, st


def _restore(h: HostRoot, bdir: str, entries: list[dict], use_restore_as: bool) -> list[str]:
    """Put back each file of a backup set; returns the host paths touched. Errors are collected, not raised
    half-way: as much as possible is restored."""
    failed, touched = [], []
    for e in entries:
        p = h.path(e["path"])
        try:
            if e["existed"]:
                with open(os.path.join(bdir, "files", e["path"].lstrip("/")), "rb") as f:
                    data = f.read()
                _write_atomic(p, data, e["mode"], e.get("uid"), e.get("gid"))
            elif use_restore_as and e.get("restore_as") is not None:
                _write_atomic(p, _encode(e["restore_as"]), 0o644)
            elif os.path.lexists(p):
                os.unlink(p)
                _fsync_dir(os.path.dirname(p))
            touched.append(e["path"])
        except OSError as err:
            failed.append(f"{e['path']} ({err.strerror or err})")
    if failed:
        raise HostError(f"could not restore {', '.join(failed)} from {bdir}/files; copy them back by hand")
    return touched


def apply_plan(h: HostRoot, plan: Plan, paths: Paths, runner: Runner | None = None, now: float | None = None,
               timeout: float = COMMAND_TIMEOUT) -> ApplyResult:
    """Carry out ``plan``: back up every file it touches to ``<state_dir>/backups/<UTC timestamp>/`` (files and
    manifest.json), write each changed file atomically (mode and owner kept), run the commands, write the
    reboot flag. Nothing to change: "unchanged" and no command runs. A write or command failure restores every
    file from the backup (and reruns regenerate commands that had already succeeded) and raises HostError with
    the command's last stderr line. ``runner`` None: the real one on the live host; on another root the commands
    are skipped and listed in the result."""
    now = time.time() if now is None else now
    if not plan.changed:
        _clear_stale_flag(h, paths)
        return ApplyResult("apply", "unchanged", False, None, [], [], [])
    run_with = _pick_runner(h, runner)
    with _Lock(paths):
        for c in plan.changes:
            if read_text(h, c.path) != c.old:
                raise HostError(f"{c.path} changed since the plan was made; run passthru prepare again")
        bdir, seq = _new_backup_set(paths, now)
        entries = []
        seen = set()
        for path in [c.path for c in plan.changes] + list(plan.backup_extra):
            if path in seen:
                continue
            seen.add(path)
            data, st = _snapshot(h, path)
            e = {"path": path, "existed": data is not None, "written": any(c.path == path for c in plan.changes)}
            if data is not None and st is not None:
                dest = os.path.join(bdir, "files", path.lstrip("/"))
                _write_atomic(dest, data, 0o600)
                e.update(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, sha256_before=_sha(data))
            restore_as = next((c.restore_as for c in plan.changes if c.path == path), None)
            if restore_as is not None:
                e["restore_as"] = restore_as
            entries.append(e)
        manifest = {"schema": _SCHEMA, "seq": seq, "status": "applying", "loader": plan.loader,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "root": h.base,
                    "args": plan.args, "files": entries, "commands": plan.commands,
                    "rollback_commands": plan.rollback_commands, "commands_skipped": run_with is None}
        _save_manifest(bdir, manifest)

        def fail(message: str) -> HostError:
            try:
                _restore(h, bdir, entries, use_restore_as=False)
            except HostError as e:
                message += f"; AND {e}"
            else:
                message += f"; every file was restored from {bdir}"
            manifest["status"] = "failed"
            _save_manifest(bdir, manifest)
            return HostError(message)

        for c in plan.changes:
            e = next(x for x in entries if x["path"] == c.path)
            try:
                _write_atomic(h.path(c.path), _encode(c.new), e.get("mode", 0o644), e.get("uid"), e.get("gid"))
            except OSError as err:
                raise fail(f"cannot write {c.path} ({err.strerror or err}); run as root") from None
        ran: list[list[str]] = []
        skipped: list[list[str]] = []
        for argv in plan.commands:
            if run_with is None:
                skipped.append(list(argv))
                continue
            rc, last = _run(run_with, argv, timeout)
            if rc != 0:
                message = f"`{_cmd(argv)}` failed (exit {rc}): {last or 'no error output'}"
                err = fail(message)
                if ran or argv[0] in REBUILDS:  # partly regenerated from the new files: again from the restored
                    bad = [c for c in plan.rollback_commands if _run(run_with, c, timeout)[0] != 0]
                    if bad:
                        err = HostError(f"{err}; then `{_cmd(bad[0])}` failed too: run it by hand")
                raise err
            ran.append(list(argv))
        for e in entries:
            e["sha256_after"] = _sha(h.read_bytes(h.path(e["path"])))
            e["exists_after"] = os.path.lexists(h.path(e["path"]))
        manifest["status"] = "applied"
        _save_manifest(bdir, manifest)
        _write_flag(h, paths, "apply", plan.args, bdir, now)
    notes = []
    if skipped:
        notes.append(f"the host root is {h.base}, not /: the commands were not run; run them inside that host")
    return ApplyResult("apply", "changed", True, bdir, [c.path for c in plan.changes], ran, skipped, notes)


def rollback(h: HostRoot, paths: Paths, runner: Runner | None = None, now: float | None = None,
             timeout: float = COMMAND_TIMEOUT) -> ApplyResult:
    """Undo the newest applied backup set: every file put back as it was (files passthru created are removed,
    except a created /etc/kernel/cmdline, which gets the command line it was made from), the regenerate commands
    rerun, the set marked rolled back (so a second rollback undoes the apply before it). Refuses when a file
    changed after the apply (a kernel update, a manual edit): restoring would lose that change."""
    now = time.time() if now is None else now
    run_with = _pick_runner(h, runner)
    with _Lock(paths):
        sets = [(d, m) for d, m in _backup_sets(paths) if m.get("status") == "applied"]
        if not sets:
            raise UsageError(f"nothing to roll back: no applied backup set in {_backups_dir(paths)}; "
                             "passthru prepare --apply makes one")
        bdir, manifest = sets[-1]
        entries = manifest.get("files", [])
        drift = [e["path"] for e in entries
                 if os.path.lexists(h.path(e["path"])) != e.get("exists_after", True)
                 or _sha(h.read_bytes(h.path(e["path"]))) != e.get("sha256_after")]
        if drift:
            raise HostError(f"cannot roll back: {', '.join(drift)} changed after passthru prepare --apply on "
                            f"{manifest.get('created')} (a kernel update or a manual edit); restore by hand from "
                            f"{bdir}/files")
        touched = _restore(h, bdir, entries, use_restore_as=True)
        ran: list[list[str]] = []
        skipped: list[list[str]] = []
        failure = None
        for argv in manifest.get("rollback_commands", []):
            if run_with is None:
                skipped.append(list(argv))
                continue
            rc, last = _run(run_with, argv, timeout)
            if rc != 0:
                failure = f"`{_cmd(argv)}` failed (exit {rc}): {last or 'no error output'}"
                break
            ran.append(list(argv))
        manifest["status"] = "rolled-back"
        manifest["rolled_back"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        _save_manifest(bdir, manifest)
        _write_flag(h, paths, "rollback", [], bdir, now)
    if failure:
        raise HostError(f"files restored from {bdir} but {failure}; fix it and run the command by hand")
    notes = []
    if skipped:
        notes.append(f"the host root is {h.base}, not /: the commands were not run; run them inside that host")
    if manifest.get("loader") == "bls":
        notes.append("BLS entries of kernels installed after the apply keep the arguments: remove them with "
                     "grubby --update-kernel=ALL --remove-args=\"...\" if needed")
    return ApplyResult("rollback", "restored", True, bdir, touched, ran, skipped, notes)


# -- text output ------------------------------------------------------------------------------------------------
def format_result(result: ApplyResult) -> str:
    out = []
    where = f" (backup: {result.backup_dir})" if result.backup_dir else ""
    if result.status == "unchanged":
        out.append("Unchanged: the boot configuration already has all of this; nothing was run.")
    elif result.action == "apply":
        out.append(f"Changed: {', '.join(result.files) or 'boot entries'}{where}")
    else:
        out.append(f"Restored: {', '.join(result.files) or 'nothing'}{where}")
    out += [f"Ran: {_cmd(c)}" for c in result.commands_run]
    out += [f"Not run: {_cmd(c)}" for c in result.commands_skipped]
    out += [f"Note: {n}" for n in result.notes]
    if result.reboot_needed:
        out.append("Reboot needed for the kernel command line and modules to take effect.")
    if result.action == "apply" and result.status == "changed":
        out.append("Undo with: passthru prepare --rollback")
    return "\n".join(out) + "\n"
