"""Runs inside the lab guest (tests/lab/test_lab_crash.py): kill -9 passthru at every failpoint of `bind --group`,
`restore`, `assign`, `release --restore` and `release`, run `passthru reconcile` after each kill, and write what the
kernel and passthru's records say to a JSON file.

Python starts slowly under TCG, so this driver imports passthru once. The command to kill runs in a forked child
that sets its failpoint (``@N``: SIGKILL itself at the N-th point it reaches, see passthru/failpoints.py) and runs
the CLI's ``main``; everything else (the trace run that lists the points, the setup, ``reconcile``, the reset)
runs the same ``main`` in this process. The parent reads the driver links from sysfs and the records from their
files and the inventory database (read-only).

    python tests/lab/crash_matrix.py GPU AUDIO OUT.json
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import signal
import subprocess
import sys
import time

import sqlite3

import passthru.service.assign  # noqa: F401 - imported once here, not in every child (TCG is slow)
import passthru.service.reconcile  # noqa: F401
from passthru import failpoints
from passthru.cli import command
from passthru.cli import main as cli_main
from passthru.kinds import load_all

SYS = "/sys/bus/pci/devices"
VM = "vmk"
STATE = "/var/lib/passthru"
JOURNAL = f"{STATE}/journal"
CHILD_SECONDS = 120


def run_here(argv: list[str], *, trace: str | None = None) -> dict:
    """One passthru command in this process (a forked child pays copy-on-write faults on everything Python touches,
    which under TCG costs seconds): {"rc", "killed": False, "out", "err"}."""
    t0 = time.monotonic()
    out, err = io.StringIO(), io.StringIO()
    if trace:
        os.environ[failpoints.TRACE_ENV] = trace
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(argv)
    finally:
        os.environ.pop(failpoints.TRACE_ENV, None)
        gc.collect()  # no inventory connection of this process lingers into the next fork
    log(f"  passthru {' '.join(argv)}: {rc} in {time.monotonic() - t0:.1f} s")
    return {"rc": rc, "killed": False, "out": out.getvalue(), "err": err.getvalue()}


def run(argv: list[str], *, spec: str | None = None, trace: str | None = None) -> dict:
    """One passthru command in a forked child, killed at its failpoint ``spec``; {"rc", "killed", "out", "err"}."""
    out_path, err_path = "/tmp/crash.out", "/tmp/crash.err"
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: passthru, with its failpoint
        rc = 99
        signal.alarm(CHILD_SECONDS)  # a hung command ends as a failure of the lab, not a silent timeout
        try:
            if trace:
                os.environ[failpoints.TRACE_ENV] = trace
            failpoints.configure(spec)
            for fd, path in ((1, out_path), (2, err_path)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(f, fd)
                os.close(f)
            rc = cli_main(argv)
        except BaseException:  # noqa: BLE001 - reported through the exit status
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc if isinstance(rc, int) else 98)
    _, status = os.waitpid(pid, 0)
    with open(out_path) as f:
        out = f.read()
    with open(err_path) as f:
        err = f.read()
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    log(f"  passthru {' '.join(argv)}{f' [{spec}]' if spec else ''}: "
        f"{'killed' if killed else os.waitstatus_to_exitcode(status)} in {time.monotonic() - t0:.1f} s")
    return {"rc": None if killed else os.waitstatus_to_exitcode(status), "killed": killed, "out": out, "err": err}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def must(argv: list[str]) -> dict:
    r = run_here(argv)
    if r["rc"] != 0:
        raise SystemExit(f"passthru {' '.join(argv)} failed ({r}): the lab cannot set up the next round")
    return json.loads(r["out"]) if "--json" in argv else r


def driver(addr: str) -> str | None:
    try:
        return os.path.basename(os.readlink(f"{SYS}/{addr}/driver"))
    except OSError:
        return None


def override(addr: str) -> str:
    with open(f"{SYS}/{addr}/driver_override") as f:
        return f.read().strip()


def group(addr: str) -> str:
    return os.path.basename(os.readlink(f"{SYS}/{addr}/iommu_group"))


def held() -> dict[str, str]:
    """The takeover's records, read straight from their files (what `passthru status` reads)."""
    d = f"{STATE}/vfio"
    out = {}
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if name.endswith(".json"):
            with open(f"{d}/{name}") as f:
                rec = json.load(f)
            out[rec["address"]] = rec["phase"]
    return out


def assigned() -> dict[str, list[str]]:
    """Active assignments, read from the inventory database (read-only)."""
    if not os.path.exists(f"{STATE}/passthru.db"):
        return {}
    db = sqlite3.connect(f"file:{STATE}/passthru.db?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT device, vm, state FROM assignments WHERE state != 'released'").fetchall()
    finally:
        db.close()
    return {dev: [vm, st] for dev, vm, st in rows}


def state(devs: list[str]) -> dict:
    return {"drivers": {a: driver(a) for a in devs}, "overrides": {a: override(a) for a in devs},
            "held": held(), "assigned": assigned(),
            "journal": sorted(os.listdir(JOURNAL)) if os.path.isdir(JOURNAL) else [],
            "dev_vfio": os.path.exists(f"/dev/vfio/{group(devs[0])}")}


def reset(devs: list[str]) -> None:
    """Back to the start: nothing assigned, nothing held, the native drivers."""
    if assigned():
        must(["release", VM, "--restore"])
    if held():
        must(["restore", "--all"])


def nested_qemu(devs: list[str]) -> list[str]:
    """The qdev ids a nested QEMU (vfio-pci on the group's functions) lists in query-pci."""
    args = ["qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", "256", "-nodefaults", "-display", "none",
            "-S", "-qmp", "stdio"]
    for i, a in enumerate(devs):
        args += ["-device", f"vfio-pci,host={a},id=pt{i}"]
    cmds = "".join(json.dumps({"execute": c}) + "\n" for c in ("qmp_capabilities", "query-pci", "quit"))
    p = subprocess.run(args, input=cmds, capture_output=True, text=True, timeout=120, check=False)
    ids = []
    for line in p.stdout.splitlines():
        if line.startswith("{") and isinstance(json.loads(line).get("return"), list):
            ids += [d.get("qdev_id") for bus in json.loads(line)["return"] for d in bus["devices"]]
    return [i for i in ids if i] or [f"(none) {p.stderr.strip()[-300:]}"]


def matrix(name: str, devs: list[str], setup: list[list[str]], op: list[str], out: dict, *,
           journal_only: bool = False) -> None:
    """Kill ``op`` at each of its points (``journal_only``: at its journal steps, not at the sysfs writes inside
    a nested takeover, which the bind and restore matrices of the same boot already kill at)."""
    reset(devs)
    for argv in setup:
        must(argv)
    trace = f"/tmp/trace.{name}"
    if os.path.exists(trace):
        os.unlink(trace)
    r = run_here(op, trace=trace)
    if r["rc"] != 0:
        raise SystemExit(f"{name}: the trace run failed: {r}")
    with open(trace) as f:
        points = f.read().split()
    log(f"{name}: {len(points)} points: {' '.join(points)}")
    rounds = []
    qemu_checked = False
    for n in range(1, len(points) + 1):
        if journal_only and points[n - 1].startswith(("kernel.", "vfio.")):
            continue
        reset(devs)
        for argv in setup:
            must(argv)
        t0 = time.monotonic()
        killed = run(op, spec=f"@{n}")
        rec = run_here(["reconcile", "--json"])
        row = {"n": n, "point": points[n - 1], "killed": killed["killed"], "rc": killed["rc"],
               "reconcile_rc": rec["rc"], "reconcile": json.loads(rec["out"]) if rec["out"].startswith("{") else
               rec["out"] + rec["err"], **state(devs)}
        if n % 3 == 0 or n == len(points):  # idempotence, on a sample of rounds (each command costs seconds)
            again = run_here(["reconcile", "--json"])
            row["second_reconcile"] = json.loads(again["out"])["status"] if again["out"].startswith("{") else again
        if not qemu_checked and all(row["drivers"][a] == "vfio-pci" for a in devs):
            row["nested_qemu"] = nested_qemu(devs)
            qemu_checked = True
        row["seconds"] = round(time.monotonic() - t0, 2)
        rounds.append(row)
    out[name] = {"points": points, "rounds": rounds}


def main() -> None:
    gpu, audio, dest = sys.argv[1], sys.argv[2], sys.argv[3]
    devs = [gpu, audio]
    out: dict = {"native": {a: driver(a) for a in devs}, "group": group(gpu)}
    subprocess.run(["modprobe", "vfio-pci"], check=True, timeout=60)
    command()  # the CLI's command model and every kind module, built once before the forks
    load_all()
    t0 = time.monotonic()
    matrix("bind", devs, [], ["bind", gpu, "--group"], out)
    matrix("restore", devs, [["bind", gpu, "--group"]], ["restore", gpu], out)
    matrix("assign", devs, [], ["assign", VM, gpu], out, journal_only=True)
    matrix("release-restore", devs, [["assign", VM, gpu]], ["release", VM, "--restore"], out, journal_only=True)
    matrix("release", devs, [["assign", VM, gpu]], ["release", VM], out)
    reset(devs)
    out["final"] = state(devs)
    out["status"] = must(["status", "--json"])
    out["seconds"] = round(time.monotonic() - t0, 1)
    with open(dest, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
