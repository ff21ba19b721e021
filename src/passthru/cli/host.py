"""The host itself: ``passthru doctor|prepare|capture``.

Each command imports the library it calls in its body (start-up time: see devices.py).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..service.session import Session
from ..service.listings import emit_json
from ..errors import UsageError
from .output import console

def doctor(
    ctx: typer.Context,
    idents: Annotated[Optional[list[str]], typer.Argument(
        metavar="[DEVICE]...", help="Also check these devices: PCI address, USB port path or serial port.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """Check the host (and devices) for passthrough; every problem comes with its fix. Exit 1 if a check fails.

    Examples: `passthru doctor`, `passthru doctor 0000:42:00.0 --json`.
    """
    from ..doctor import FAIL, PASS, SKIP, WARN, run_doctor
    from ..lookup import resolve_device

    c: Session = ctx.obj
    inv = c.inventory()
    selected = [resolve_device(inv, i) for i in idents or []]
    report = run_doctor(c.host, selected, inv, c.paths)
    if as_json:
        emit_json(report.to_json())
    else:
        con = console()
        style = {PASS: "green", WARN: "yellow", FAIL: "red", SKIP: "dim"}
        for f in report.findings:
            mark = {PASS: "ok  ", WARN: "warn", FAIL: "FAIL", SKIP: "skip"}[f.status]
            con.print(f"[{style[f.status]}]{mark}[/{style[f.status]}] {f.title}: {f.evidence}", markup=True)
            if f.fix and f.status != PASS:
                con.print(f"       fix: {f.fix}", markup=False)
        s = report.summary()
        con.print(f"{s[PASS]} passed, {s[WARN]} warnings, {s[FAIL]} failed, {s[SKIP]} skipped")
    if report.failed:
        raise typer.Exit(1)


def prepare(
    ctx: typer.Context,
    addresses: Annotated[Optional[list[str]], typer.Argument(
        metavar="[ADDRESS]...", help="With --early: the PCI functions vfio-pci claims at boot.")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="Keep nouveau off at boot (rdblacklist=nouveau nouveau.modeset=0).")] = False,
    hugepages: Annotated[Optional[str], typer.Option("--hugepages", metavar="SIZE:COUNT",
                                                     help="Reserve hugepages at boot, e.g. 1G:16 or 2M:1024.")] = None,
    unsafe_interrupts: Annotated[bool, typer.Option("--unsafe-interrupts",
                                                    help="Add vfio_iommu_type1.allow_unsafe_interrupts=1.")] = False,
    early: Annotated[bool, typer.Option("--early", help="vfio-pci claims the ADDRESS devices at boot (modprobe.d "
                                                        "ids= and softdep, vfio in the initramfs).")] = False,
    allow_shared_ids: Annotated[bool, typer.Option(
        "--allow-shared-ids", help="--early even when devices on host drivers have the same IDs (vfio-pci takes "
                                   "them too).")] = False,
    force_netdev: Annotated[bool, typer.Option("--force-netdev", help="--early a NIC the host has an address "
                                               "on.")] = False,
    allow_boot_vga: Annotated[bool, typer.Option("--allow-boot-vga", help="--early the boot display.")] = False,
    apply: Annotated[bool, typer.Option("--apply", help="Write the changes (with backups) and regenerate.")] = False,
    do_rollback: Annotated[bool, typer.Option("--rollback", help="Restore the last applied backup set.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
) -> None:
    """Prepare the host: IOMMU kernel arguments for this CPU vendor, boot loader config, vfio modules at boot.

    Dry run by default (shows diffs and commands). Examples: `passthru prepare`, `passthru prepare --gpu
    --hugepages 1G:16`, `passthru prepare --early 0000:01:00.0 0000:01:00.1`, `passthru prepare --apply`,
    `passthru prepare --rollback`.
    """
    from ..prepare import (ALLOW_SHARED_IDS, PrepareOptions, apply_plan, format_plan, format_result, make_plan,
                          parse_hugepages, read_host_facts, rollback)

    c: Session = ctx.obj
    if apply and do_rollback:
        raise UsageError("--apply and --rollback exclude each other; pick one")
    overrides = {flag for flag, on in ((ALLOW_SHARED_IDS, allow_shared_ids), ("--force-netdev", force_netdev),
                                       ("--allow-boot-vga", allow_boot_vga)) if on}
    if addresses and not early:
        raise UsageError(f"{addresses[0]}: device addresses go with --early (passthru prepare --early ADDRESS...)")
    if early and not addresses:
        raise UsageError("--early needs the PCI addresses of the devices vfio-pci should claim at boot, e.g. "
                         "passthru prepare --early 0000:01:00.0 0000:01:00.1")
    if overrides and not early:
        raise UsageError(f"{sorted(overrides)[0]} goes with --early ADDRESS...")
    if do_rollback:
        res = rollback(c.host, c.paths)
        emit_json(res.to_json()) if as_json else print(format_result(res))
        return
    opts = PrepareOptions(gpu=gpu, hugepages=parse_hugepages(hugepages) if hugepages else None,
                          unsafe_interrupts=unsafe_interrupts, early=tuple(addresses or ()),
                          overrides=frozenset(overrides))
    plan = make_plan(c.host, read_host_facts(c.host), opts)
    if apply:
        res = apply_plan(c.host, plan, c.paths)
        emit_json(res.to_json()) if as_json else print(format_result(res))
    else:
        emit_json(plan.to_json()) if as_json else print(format_plan(plan))


def capture(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE.tar.gz",
                                        help="Where to write the snapshot.")],
) -> None:
    """Snapshot what discovery reads (sysfs/procfs attributes, symlinks kept; no secrets) into a tarball.

    Replay it with `passthru --root DIR devices` after `tar xzf FILE.tar.gz -C DIR`. Attach it to bug reports.
    Example: `passthru capture -o host.tar.gz`.
    """
    from ..capture import capture_host

    c: Session = ctx.obj
    try:
        stats = capture_host(c.host, output)
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}; choose a writable path with -o") from None
    print(f"wrote {output}: {stats.files} files, {stats.links} links, {stats.dirs} directories")
