"""``passthru prepare`` against fake host roots (tests/prepare_fixtures.py): the boot loader and distribution
matrix with the exact regenerate commands, odd /etc/default/grub files, idempotence, failures restoring every
byte, rollback, bad input touching nothing, and properties of the argument edit."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passthru.config import Paths
from passthru.errors import HostError, UsageError
from passthru.host.boot import configured_args, find_grub_var, read_boot, split_args
from passthru.host.root import HostRoot
from passthru.prepare import (UNSAFE_INTERRUPTS_ARG, HostFacts, PrepareOptions, SubprocessRunner, apply_plan,
                              desired_kernel_args, edit_args, edit_grub_default, edit_kernel_cmdline, edit_modules,
                              format_plan, format_result, make_plan, missing_args, parse_hugepages, pending_reboot,
                              read_host_facts, rollback, unwanted_kernel_args)
from prepare_fixtures import (CENTOS_GRUB, DEBIAN_GRUB, KERNELS, RHEL_GRUB, FakeRunner, bls_options_of, boot_host,
                              grubby_effect, snapshot)

INTEL = HostFacts("intel", (6, 8), True)
AMD = HostFacts("amd", (6, 8), True)
NONE = PrepareOptions()


def setup(root: Path) -> tuple[HostRoot, Paths]:
    h = HostRoot(root)
    return h, Paths.for_root(h)


def read(root: Path, host_path: str) -> str:
    return (root / host_path.lstrip("/")).read_text()


def grub_line(root: Path) -> str:
    return next(line for line in read(root, "/etc/default/grub").splitlines() if line.startswith("GRUB_CMDLINE_LINUX="))


# -- the matrix: CPU vendor x firmware x boot loader/distribution x kernel -------------------------------------
MODS_61 = "vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n"
MODS_68 = "vfio\nvfio_iommu_type1\nvfio_pci\n"

CASES = [(cpu, efi, kind, kv) for cpu in ("intel", "amd") for efi in (False, True)
         for kind in ("debian", "rhel-bls", "centos", "systemd-boot") for kv in ((6, 1), (6, 8))
         if not (kind == "systemd-boot" and not efi)]


def expected_commands(kind: str, efi: bool, args: str, kernel: str) -> list[list[str]]:
    if kind == "debian":
        return [["update-grub"]]
    if kind == "centos":
        return [["grub2-mkconfig", "-o", "/boot/efi/EFI/centos/grub.cfg" if efi else "/boot/grub2/grub.cfg"]]
    if kind == "rhel-bls":
        return [["grubby", "--update-kernel=ALL", f"--args={args}"]]
    return [["kernel-install", "add", kernel, f"/boot/vmlinuz-{kernel}", f"/boot/initrd.img-{kernel}"]]


@pytest.mark.parametrize("cpu,efi,kind,kv", CASES,
                         ids=[f"{c}-{'uefi' if e else 'bios'}-{k}-{v[0]}.{v[1]}" for c, e, k, v in CASES])
def test_matrix(tmp_path, cpu, efi, kind, kv):
    kernel = KERNELS[kv]
    root = boot_host(tmp_path, kind, efi=efi, cpu=cpu, kernel=kernel)
    h, paths = setup(root)
    facts = HostFacts(cpu, kv, True)
    args = "intel_iommu=on iommu=pt" if cpu == "intel" else "iommu=pt"
    before = snapshot(root)

    plan = make_plan(h, facts, NONE)
    assert snapshot(root) == before, "the dry run writes nothing"
    assert not os.path.exists(paths.state_dir)
    assert plan.loader == {"debian": "grub", "centos": "grub"}.get(kind, kind if kind != "rhel-bls" else "bls")
    assert plan.args == args.split()
    assert plan.commands == expected_commands(kind, efi, args, kernel)
    assert plan.changed and not plan.manual
    assert json.loads(json.dumps(plan.to_json()))["commands"] == plan.commands

    runner = FakeRunner(effect=grubby_effect(root))
    result = apply_plan(h, plan, paths, runner, now=1_700_000_000)
    assert result.status == "changed" and result.reboot_needed
    assert runner.calls == plan.commands
    assert read(root, "/etc/modules-load.d/vfio.conf").endswith(MODS_61 if kv < (6, 2) else MODS_68)
    if kind in ("debian", "centos", "rhel-bls"):
        assert grub_line(root).endswith(f' {args}"') or grub_line(root) == f'GRUB_CMDLINE_LINUX="{args}"'
    if kind == "rhel-bls":
        assert all(o.endswith(" " + args) for o in bls_options_of(root).values())
    if kind == "systemd-boot":
        assert read(root, "/etc/kernel/cmdline") == (
            f"root=UUID=5d4c1c9e-8a63-4a43-b1f4-7f0e2b9b8f11 ro quiet {args}\n")
    assert configured_args(h) and not missing_args(configured_args(h), plan.args)
    backup = Path(result.backup_dir)
    assert backup.parent == Path(paths.state_dir) / "backups" and backup.name == "20231114T221320Z"
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["status"] == "applied" and manifest["commands"] == plan.commands
    assert {f["path"]: f["existed"] for f in manifest["files"]}["/etc/modules-load.d/vfio.conf"] is False
    flag = json.loads((Path(paths.state_dir) / "reboot-required").read_text())
    assert flag["action"] == "apply" and flag["args"] == args.split()

    # idempotent: nothing differs, nothing runs
    again = make_plan(h, facts, NONE)
    assert not again.changed and again.changes == [] and again.commands == []
    second = apply_plan(h, again, paths, runner)
    assert second.status == "unchanged" and not second.reboot_needed and second.backup_dir is None
    assert runner.calls == plan.commands
    assert "Nothing to change" in format_plan(again) and "Unchanged" in format_result(second)


def test_systemd_boot_needs_uefi(tmp_path):
    """A BIOS boot cannot be systemd-boot, whatever files lie around: GRUB's config wins."""
    root = boot_host(tmp_path, "debian", efi=False)
    (root / "boot/efi/loader").mkdir(parents=True)
    (root / "boot/efi/loader/loader.conf").write_text("timeout 3\n")
    assert read_boot(HostRoot(root)).loader == "grub"
    assert read_boot(HostRoot(boot_host(tmp_path, "systemd-boot", efi=True, name="sd"))).loader == "systemd-boot"


# -- desired arguments ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("facts,opts,unsafe", [
    (HostFacts("intel", (6, 8), True), NONE, False),
    (HostFacts("intel", (6, 8), False), NONE, True),
    (HostFacts("amd", (6, 8), None), NONE, False),
    (HostFacts("amd", (6, 8), True), PrepareOptions(unsafe_interrupts=True), True),
    (HostFacts("amd", (6, 8), False), NONE, True),
])
def test_unsafe_interrupts_only_without_remapping_or_asked(facts, opts, unsafe):
    assert (UNSAFE_INTERRUPTS_ARG in desired_kernel_args(facts, opts)) is unsafe


def test_desired_args_per_vendor_and_options():
    assert desired_kernel_args(INTEL, NONE) == ["intel_iommu=on", "iommu=pt"]
    assert desired_kernel_args(AMD, NONE) == ["iommu=pt"]
    assert desired_kernel_args(HostFacts(None, None, None), NONE) == ["iommu=pt"]
    assert desired_kernel_args(AMD, PrepareOptions(gpu=True, hugepages=("1G", 16))) == [
        "iommu=pt", "rdblacklist=nouveau", "nouveau.modeset=0", "default_hugepagesz=1G", "hugepagesz=1G",
        "hugepages=16"]
    assert desired_kernel_args(INTEL, PrepareOptions(hugepages=parse_hugepages("2M:1024")))[-3:] == [
        "default_hugepagesz=2M", "hugepagesz=2M", "hugepages=1024"]


@pytest.mark.parametrize("facts,opts,kept", [
    (HostFacts("intel", (6, 8), True), NONE, False),
    (HostFacts("intel", (6, 8), None), NONE, True),
    (HostFacts("intel", (6, 8), True), PrepareOptions(unsafe_interrupts=True), True),
])
def test_unsafe_interrupts_removed_when_remapping_works(tmp_path, facts, opts, kept):
    text = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX=""',
                               'GRUB_CMDLINE_LINUX="vfio_iommu_type1.allow_unsafe_interrupts=1 quiet"')
    new, plan = grub_after(tmp_path, text, facts, opts)
    assert (UNSAFE_INTERRUPTS_ARG in find_grub_var(new, "GRUB_CMDLINE_LINUX").args()) is kept
    assert any("would only weaken isolation" in n for n in plan.notes) is not kept


def test_unsafe_interrupts_removed_from_bls_entries(tmp_path):
    root = boot_host(tmp_path, "rhel-bls", bls_options="root=/dev/sda2 ro vfio_iommu_type1.allow_unsafe_interrupts=1")
    h, paths = setup(root)
    plan = make_plan(h, INTEL, NONE)
    assert plan.commands == [["grubby", "--update-kernel=ALL", "--args=intel_iommu=on iommu=pt",
                              "--remove-args=vfio_iommu_type1.allow_unsafe_interrupts=1"]]
    apply_plan(h, plan, paths, FakeRunner(effect=grubby_effect(root)))
    assert set(bls_options_of(root).values()) == {"root=/dev/sda2 ro intel_iommu=on iommu=pt"}
    assert not make_plan(h, INTEL, NONE).changed


@pytest.mark.parametrize("log,ir", [
    ("DMAR: IOMMU enabled\nDMAR-IR: Enabled IRQ remapping in x2apic mode\n", True),
    ("DMAR-IR: Failed to enable irq remapping. You are vulnerable to irq-injection attacks.\n", False),
    ("AMD-Vi: Interrupt remapping enabled\n", True),
    ("Linux version 6.8.0-45-generic\n", None),
    (None, None),
])
def test_read_host_facts(tmp_path, log, ir):
    root = boot_host(tmp_path, "debian", cpu="amd", kernel="6.1.0-25-amd64")
    if log is not None:
        (root / "dev/kmsg").write_text(log)
    facts = read_host_facts(HostRoot(root))
    assert facts == HostFacts("amd", (6, 1), ir)
    assert (UNSAFE_INTERRUPTS_ARG in make_plan(HostRoot(root), facts, NONE).args) is (ir is False)


def test_ir_unknown_is_said(tmp_path):
    plan = make_plan(HostRoot(boot_host(tmp_path, "debian")), HostFacts("intel", (6, 8), None), NONE)
    assert UNSAFE_INTERRUPTS_ARG not in plan.args
    assert any("--unsafe-interrupts" in n for n in plan.notes)


# -- --hugepages input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [("1G:16", ("1G", 16)), ("2M:1024", ("2M", 1024)), ("1g:4", ("1G", 4)),
                                       (" 2MB : 8 ", ("2M", 8))])
def test_parse_hugepages(text, want):
    assert parse_hugepages(text) == want


@pytest.mark.parametrize("text", ["1G", "16", "4M:16", "1T:2", "1G:0", "1G:-3", "1G:x", "", ":", "1G:16:2",
                                  "2M:1.5", "G:16", "1G:"])
def test_bad_hugepages_is_a_usage_error(text):
    with pytest.raises(UsageError) as e:
        parse_hugepages(text)
    msg = str(e.value)
    assert "\n" not in msg and "--hugepages" in msg and "1G:16" in msg


@pytest.mark.parametrize("hp", [("4M", 16), ("1G", 0), ("1G", -1), ("1G", "16"), ("1G", True), "1G:16"])
def test_bad_hugepages_option_touches_nothing(tmp_path, hp):
    root = boot_host(tmp_path, "debian")
    before = snapshot(root, skip=())
    with pytest.raises(UsageError):
        make_plan(HostRoot(root), INTEL, PrepareOptions(hugepages=hp))
    assert snapshot(root, skip=()) == before


def test_hugepages_beyond_memory_refused(tmp_path):
    root = boot_host(tmp_path, "debian", meminfo_gib=32)
    before = snapshot(root, skip=())
    with pytest.raises(UsageError, match=r"reserves 64\.0 GiB but the host has 32\.0 GiB"):
        make_plan(HostRoot(root), INTEL, PrepareOptions(hugepages=("1G", 64)))
    assert snapshot(root, skip=()) == before
    plan = make_plan(HostRoot(root), INTEL, PrepareOptions(hugepages=("1G", 30)))
    assert any("little is left for the host" in n for n in plan.notes)


# -- odd /etc/default/grub files --------------------------------------------------------------------------------
def grub_after(tmp_path, text: str, facts=INTEL, opts=NONE) -> tuple[str, object]:
    root = boot_host(tmp_path, "debian", grub=text)
    h, paths = setup(root)
    plan = make_plan(h, facts, opts)
    apply_plan(h, plan, paths, FakeRunner())
    return read(root, "/etc/default/grub"), plan


def assert_only_line_changed(old: str, new: str, line: str) -> None:
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    assert len(a) == len(b)
    diff = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(diff) == 1 and diff[0][1] == line


def test_grub_comments_and_other_variables_kept_byte_for_byte(tmp_path):
    new, _ = grub_after(tmp_path, DEBIAN_GRUB)
    assert_only_line_changed(DEBIAN_GRUB, new, 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n')
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n' in new


def test_grub_without_cmdline_line_gets_one_appended(tmp_path):
    old = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX=""\n', "").rstrip("\n")  # and no final newline
    new, _ = grub_after(tmp_path, old)
    assert new == old + '\nGRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n'


@pytest.mark.parametrize("old,line", [
    ("GRUB_CMDLINE_LINUX='quiet splash'", "GRUB_CMDLINE_LINUX='quiet splash intel_iommu=on iommu=pt'"),
    ("GRUB_CMDLINE_LINUX=quiet", 'GRUB_CMDLINE_LINUX="quiet intel_iommu=on iommu=pt"'),
    ("GRUB_CMDLINE_LINUX=", 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"'),
    ("GRUB_CMDLINE_LINUX=iommu=pt", 'GRUB_CMDLINE_LINUX="iommu=pt intel_iommu=on"'),
    ('GRUB_CMDLINE_LINUX="iommu=pt quiet iommu=pt intel_iommu=on intel_iommu=on"',
     'GRUB_CMDLINE_LINUX="iommu=pt quiet intel_iommu=on"'),
    ('GRUB_CMDLINE_LINUX="iommu=soft console=ttyS0,115200"',
     'GRUB_CMDLINE_LINUX="iommu=pt console=ttyS0,115200 intel_iommu=on"'),
    ('GRUB_CMDLINE_LINUX="intel_iommu=igfx_off iommu=pt"', 'GRUB_CMDLINE_LINUX="intel_iommu=on,igfx_off iommu=pt"'),
    ('GRUB_CMDLINE_LINUX="intel_iommu=off"', 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"'),
    ('  export GRUB_CMDLINE_LINUX="quiet"   # for the VMs',
     '  export GRUB_CMDLINE_LINUX="quiet intel_iommu=on iommu=pt"   # for the VMs'),
    ('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX foo=\\"a b\\""',
     'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX foo=\\"a b\\" intel_iommu=on iommu=pt"'),
    ("GRUB_CMDLINE_LINUX='dyndbg=\"file x.c +p\"'",
     "GRUB_CMDLINE_LINUX='dyndbg=\"file x.c +p\" intel_iommu=on iommu=pt'"),
])
def test_grub_quoting_styles(tmp_path, old, line):
    text = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX=""', old)
    new, plan = grub_after(tmp_path, text)
    assert_only_line_changed(text, new, line + "\n")
    assert plan.commands == [["update-grub"]]


def test_grub_last_assignment_is_edited(tmp_path):
    text = 'GRUB_CMDLINE_LINUX="first"\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="second"\n'
    new, _ = grub_after(tmp_path, text)
    assert new == 'GRUB_CMDLINE_LINUX="first"\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="second intel_iommu=on iommu=pt"\n'


def test_grub_already_prepared_is_unchanged(tmp_path):
    text = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="intel_iommu=on,sm_on quiet iommu=pt"')
    root = boot_host(tmp_path, "debian", grub=text)
    (root / "etc/modules-load.d").mkdir(parents=True)
    (root / "etc/modules-load.d/vfio.conf").write_text(MODS_68)
    plan = make_plan(HostRoot(root), INTEL, NONE)
    assert not plan.changed


@pytest.mark.parametrize("line,why", [
    ('GRUB_CMDLINE_LINUX="quiet\n  splash"', "continues on the next line"),
    ('GRUB_CMDLINE_LINUX="quiet"" splash"', "more follows"),
    ("GRUB_CMDLINE_LINUX=quiet\\ splash", "quotes or backslashes"),
    ('GRUB_CMDLINE_LINUX="$(cat /etc/cmdline)"', "runs a command"),
])
def test_grub_value_passthru_cannot_rewrite_is_left_for_the_operator(tmp_path, line, why):
    text = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX=""', line)
    root = boot_host(tmp_path, "debian", grub=text)
    h, paths = setup(root)
    plan = make_plan(h, INTEL, NONE)
    assert [c.path for c in plan.changes] == ["/etc/modules-load.d/vfio.conf"] and plan.commands == []
    assert any(why in m and "intel_iommu=on iommu=pt" in m and "by hand" in m for m in plan.manual)
    runner = FakeRunner()
    apply_plan(h, plan, paths, runner)
    assert read(root, "/etc/default/grub") == text and runner.calls == []


def test_grub_default_conflict_and_grub_d_override_are_reported(tmp_path):
    text = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX_DEFAULT="quiet"', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=soft"')
    root = boot_host(tmp_path, "ubuntu", grub=text)
    (root / "etc/default/grub.d").mkdir()
    (root / "etc/default/grub.d/50-cloudimg-settings.cfg").write_text('GRUB_CMDLINE_LINUX="console=ttyS0"\n')
    (root / "etc/default/grub.d/60-ok.cfg").write_text('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX nomodeset"\n')
    plan = make_plan(HostRoot(root), INTEL, NONE)
    new = next(c.new for c in plan.changes if c.path == "/etc/default/grub")
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=soft"' in new, "GRUB_CMDLINE_LINUX_DEFAULT is never touched"
    assert any("iommu=soft" in m and "GRUB_CMDLINE_LINUX_DEFAULT" in m for m in plan.manual)
    assert any("50-cloudimg-settings.cfg" in m for m in plan.manual)
    assert not any("60-ok.cfg" in m for m in plan.manual)


def test_symlinked_grub_file_is_not_replaced(tmp_path):
    root = boot_host(tmp_path, "debian")
    (root / "etc/default/grub.real").write_text(DEBIAN_GRUB)
    (root / "etc/default/grub").unlink()
    (root / "etc/default/grub").symlink_to("grub.real")
    plan = make_plan(HostRoot(root), INTEL, NONE)
    assert plan.commands == [] and any("symbolic link" in m for m in plan.manual)


# -- regenerate commands per distribution -----------------------------------------------------------------------
def test_ubuntu_arch_and_unknown_distributions(tmp_path):
    assert make_plan(HostRoot(boot_host(tmp_path, "ubuntu", name="u")), INTEL, NONE).commands == [["update-grub"]]
    root = boot_host(tmp_path, "debian", name="arch")
    (root / "etc/os-release").write_text('NAME="Arch Linux"\nID=arch\n')
    assert make_plan(HostRoot(root), AMD, NONE).commands == [["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]]
    (root / "etc/os-release").write_text("ID=gentoo\n")
    plan = make_plan(HostRoot(root), AMD, NONE)
    assert plan.commands == [] and any("regenerate the GRUB menu by hand" in m for m in plan.manual)
    (root / "boot/grub2").mkdir()
    (root / "boot/grub2/grub.cfg").write_text("# generated\n")
    assert make_plan(HostRoot(root), AMD, NONE).commands == [["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]]


def test_rhel_classic_grub_targets(tmp_path):
    """RHEL-like without BLS: BIOS /boot/grub2/grub.cfg; UEFI the distribution's EFI directory (redhat for
    ID=rhel), except the RHEL 9 / Fedora stub that only chains to /boot/grub2/grub.cfg."""
    root = boot_host(tmp_path, "rhel-bls", grub=CENTOS_GRUB, efi=True)
    import shutil
    shutil.rmtree(root / "boot/loader")
    (root / "usr/sbin/grubby").unlink()
    assert make_plan(HostRoot(root), INTEL, NONE).commands == [["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]]
    (root / "boot/efi/EFI/redhat/grub.cfg").write_text("### BEGIN /etc/grub.d/10_linux ###\nmenuentry 'RHEL' {\n"
                                                       "  linuxefi /vmlinuz root=/dev/sda2\n}\n")
    assert make_plan(HostRoot(root), INTEL, NONE).commands == [
        ["grub2-mkconfig", "-o", "/boot/efi/EFI/redhat/grub.cfg"]]
    rocky = boot_host(tmp_path, "centos", efi=True, name="rocky")
    (rocky / "etc/os-release").write_text('ID="rocky"\nID_LIKE="rhel centos fedora"\n')
    (rocky / "boot/efi/EFI/rocky").mkdir()
    assert make_plan(HostRoot(rocky), INTEL, NONE).commands == [
        ["grub2-mkconfig", "-o", "/boot/efi/EFI/rocky/grub.cfg"]]


def test_stale_generated_grub_menu_is_regenerated_once(tmp_path):
    """/etc/default/grub already has the arguments (edited by hand) but grub.cfg was never regenerated."""
    text = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"')
    root = boot_host(tmp_path, "debian", grub=text)
    cfg = root / "boot/grub/grub.cfg"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("menuentry 'Debian GNU/Linux' {\n\tlinux\t/boot/vmlinuz-6.8.0-45-generic root=UUID=x ro  quiet\n}\n")
    h, paths = setup(root)
    plan = make_plan(h, INTEL, NONE)
    assert plan.commands == [["update-grub"]] and any("lacks arguments" in n for n in plan.notes)

    def regenerate(argv):
        cfg.write_text(cfg.read_text().replace("ro  quiet", "ro intel_iommu=on iommu=pt quiet"))
    runner = FakeRunner(effect=regenerate)
    apply_plan(h, plan, paths, runner)
    assert not make_plan(h, INTEL, NONE).changed


# -- BLS (RHEL 9 with grubby) -----------------------------------------------------------------------------------
def test_bls_replaces_conflicting_values_and_keeps_files_in_sync(tmp_path):
    opts = "root=/dev/mapper/rhel-root ro iommu=soft rdblacklist=radeon rhgb quiet"
    root = boot_host(tmp_path, "rhel-bls", kernels=("5.14.0-427.13.1.el9_4.x86_64", "5.14.0-503.11.1.el9_5.x86_64"),
                     bls_options=opts)
    (root / "etc/kernel").mkdir()
    (root / "etc/kernel/cmdline").write_text(opts + "\n")
    h, paths = setup(root)
    plan = make_plan(h, HostFacts("intel", (5, 14), True), PrepareOptions(gpu=True))
    assert plan.commands == [["grubby", "--update-kernel=ALL",
                              "--args=intel_iommu=on iommu=pt rdblacklist=radeon,nouveau nouveau.modeset=0",
                              "--remove-args=iommu=soft"]]
    assert sorted(c.path for c in plan.changes) == ["/etc/default/grub", "/etc/kernel/cmdline",
                                                    "/etc/modules-load.d/vfio.conf"]
    assert "rdblacklist=radeon iommu=pt" not in read(root, "/etc/kernel/cmdline")
    runner = FakeRunner(effect=grubby_effect(root))
    apply_plan(h, plan, paths, runner)
    for o in bls_options_of(root).values():
        assert o == ("root=/dev/mapper/rhel-root ro rhgb quiet intel_iommu=on iommu=pt rdblacklist=radeon,nouveau "
                     "nouveau.modeset=0")
    assert read(root, "/etc/kernel/cmdline") == ("root=/dev/mapper/rhel-root ro iommu=pt rdblacklist=radeon rhgb "
                                                 "quiet intel_iommu=on rdblacklist=nouveau nouveau.modeset=0\n")
    assert read(root, "/etc/modules-load.d/vfio.conf").endswith(MODS_61)
    assert not make_plan(h, HostFacts("intel", (5, 14), True), PrepareOptions(gpu=True)).changed


def test_bls_entries_already_prepared_only_syncs_grub_defaults(tmp_path):
    root = boot_host(tmp_path, "rhel-bls", bls_options="root=/dev/sda2 ro intel_iommu=on iommu=pt")
    plan = make_plan(HostRoot(root), INTEL, NONE)
    assert plan.commands == [] and [c.path for c in plan.changes] == ["/etc/default/grub",
                                                                     "/etc/modules-load.d/vfio.conf"]


def test_bls_detected_from_grub_defaults_without_grubby_binary(tmp_path):
    """A capture carries /etc and /boot entries but no binaries: GRUB_ENABLE_BLSCFG=true says BLS."""
    root = boot_host(tmp_path, "rhel-bls")
    (root / "usr/sbin/grubby").unlink()
    assert read_boot(HostRoot(root)).loader == "bls"
    (root / "etc/default/grub").write_text(RHEL_GRUB.replace("GRUB_ENABLE_BLSCFG=true\n", ""))
    assert read_boot(HostRoot(root)).loader == "grub"


def test_bls_rhel8_kernelopts_from_grubenv(tmp_path):
    root = boot_host(tmp_path, "rhel-bls", bls_options="$kernelopts $tuned_params")
    (root / "boot/grub2/grubenv").write_text("# GRUB Environment Block\nkernelopts=root=/dev/sda2 ro intel_iommu=on "
                                             "iommu=pt\n" + "#" * 900 + "\n")
    plan = make_plan(HostRoot(root), INTEL, NONE)
    assert plan.commands == []


def test_bls_failed_grubby_restores_entries_and_files(tmp_path):
    root = boot_host(tmp_path, "rhel-bls")
    h, paths = setup(root)
    before = snapshot(root)
    plan = make_plan(h, INTEL, NONE)
    assert "/boot/grub2/grubenv" in plan.backup_extra

    def half_done(argv):  # grubby changed an entry, then failed
        grubby_effect(root)(argv)
    runner = FakeRunner(fail={"grubby": (1, "grubby: error: cannot write /boot/loader/entries/x.conf")},
                        effect=half_done)
    with pytest.raises(HostError, match=r"`grubby .*` failed \(exit 1\): grubby: error: cannot write"):
        apply_plan(h, plan, paths, runner)
    assert snapshot(root) == before


def test_bls_rollback_restores_entries(tmp_path):
    root = boot_host(tmp_path, "rhel-bls")
    h, paths = setup(root)
    before = snapshot(root)
    runner = FakeRunner(effect=grubby_effect(root))
    apply_plan(h, make_plan(h, INTEL, NONE), paths, runner)
    assert snapshot(root) != before
    result = rollback(h, paths, runner)
    assert snapshot(root) == before
    assert result.commands_run == [] and len(runner.calls) == 1, "the restored entries are the boot menu"


# -- systemd-boot -----------------------------------------------------------------------------------------------
def test_systemd_boot_existing_cmdline_and_every_kernel(tmp_path):
    ks = ("6.1.0-25-amd64", "6.1.0-9-amd64", "6.10.6-amd64")
    root = boot_host(tmp_path, "systemd-boot", kernel="6.1.0-25-amd64", kernels=ks,
                     kernel_cmdline="root=UUID=abc ro quiet iommu=soft\n")
    h, paths = setup(root)
    plan = make_plan(h, AMD, NONE)
    assert [c.path for c in plan.changes] == ["/etc/kernel/cmdline", "/etc/modules-load.d/vfio.conf"]
    assert plan.changes[0].new == "root=UUID=abc ro quiet iommu=pt\n"
    assert plan.commands == [["kernel-install", "add", k, f"/boot/vmlinuz-{k}", f"/boot/initrd.img-{k}"]
                             for k in ("6.1.0-9-amd64", "6.1.0-25-amd64", "6.10.6-amd64")]


def test_systemd_boot_detection_variants(tmp_path):
    root = boot_host(tmp_path, "systemd-boot")
    (root / "boot/efi/loader/loader.conf").unlink()
    info = read_boot(HostRoot(root))
    assert info.loader == "systemd-boot" and info.esp == "/boot/efi", "EFI/systemd/ is enough"
    # a capture: /etc/kernel/cmdline, UEFI, no /boot at all -> the running kernel
    cap = boot_host(tmp_path, "unknown", kernel="6.8.0-45-generic", name="capture")
    (cap / "etc/os-release").write_text('ID=ubuntu\nID_LIKE=debian\n')
    (cap / "etc/kernel").mkdir()
    (cap / "etc/kernel/cmdline").write_text("root=/dev/nvme0n1p2 ro\n")
    info = read_boot(HostRoot(cap))
    assert info.loader == "systemd-boot" and info.regenerate == (
        ("kernel-install", "add", "6.8.0-45-generic", "/boot/vmlinuz-6.8.0-45-generic",
         "/boot/initrd.img-6.8.0-45-generic"),)
    # Fedora layout: kernels under /usr/lib/modules, no initrd argument (kernel-install makes it)
    fed = boot_host(tmp_path, "unknown", name="fedora")
    (fed / "efi/loader").mkdir(parents=True)
    (fed / "efi/loader/loader.conf").write_text("")
    (fed / "usr/lib/modules/6.10.6-200.fc40.x86_64").mkdir(parents=True)
    (fed / "usr/lib/modules/6.10.6-200.fc40.x86_64/vmlinuz").write_bytes(b"k")
    assert read_boot(HostRoot(fed)).regenerate == (
        ("kernel-install", "add", "6.10.6-200.fc40.x86_64", "/usr/lib/modules/6.10.6-200.fc40.x86_64/vmlinuz"),)


def test_systemd_boot_partial_failure_restores_and_regenerates(tmp_path):
    ks = ("6.1.0-25-amd64", "6.1.0-26-amd64")
    root = boot_host(tmp_path, "systemd-boot", kernels=ks, kernel="6.1.0-26-amd64")
    h, paths = setup(root)
    before = snapshot(root)
    plan = make_plan(h, INTEL, NONE)
    calls = []

    class SecondFails(FakeRunner):
        def run(self, argv, timeout):
            calls.append(list(argv))
            return (1, "", "dracut: cannot write\nkernel-install: no space left on device") if argv[2] == ks[1] and \
                len(calls) == 2 else (0, "", "")
    with pytest.raises(HostError) as e:
        apply_plan(h, plan, paths, SecondFails())
    assert "no space left on device" in str(e.value) and "restored" in str(e.value)
    assert snapshot(root) == before
    assert calls == plan.commands + plan.commands, "kernel 1 got entries from the new cmdline: regenerated again"


def test_systemd_boot_rollback_keeps_created_cmdline_with_original_args(tmp_path):
    root = boot_host(tmp_path, "systemd-boot")
    h, paths = setup(root)
    runner = FakeRunner()
    apply_plan(h, make_plan(h, INTEL, NONE), paths, runner)
    assert "intel_iommu=on" in read(root, "/etc/kernel/cmdline")
    rollback(h, paths, runner)
    assert read(root, "/etc/kernel/cmdline") == "root=UUID=5d4c1c9e-8a63-4a43-b1f4-7f0e2b9b8f11 ro quiet\n"
    assert not (root / "etc/modules-load.d/vfio.conf").exists()
    assert runner.calls == [runner.calls[0]] * 2


# -- failures restore every byte --------------------------------------------------------------------------------
@pytest.mark.parametrize("outcome,message", [
    ((1, "Generating grub configuration file ...\n/usr/sbin/grub-mkconfig: 278: cannot create "
         "/boot/grub/grub.cfg.new: Read-only file system\n"), "Read-only file system"),
    ((127, "update-grub: command not found"), "command not found"),
    (FileNotFoundError(2, "No such file or directory"), "update-grub: command not found"),
    (TimeoutError(), "timed out after 600 s"),
])
def test_failed_regenerate_restores_byte_for_byte(tmp_path, outcome, message):
    text = DEBIAN_GRUB.replace('GRUB_CMDLINE_LINUX=""', "GRUB_CMDLINE_LINUX='iommu=soft'")
    root = boot_host(tmp_path, "debian", grub=text)
    os.chmod(root / "etc/default/grub", 0o600)
    h, paths = setup(root)
    before = snapshot(root)
    plan = make_plan(h, INTEL, NONE)
    runner = FakeRunner(fail={"update-grub": outcome})
    with pytest.raises(HostError) as e:
        apply_plan(h, plan, paths, runner)
    msg = str(e.value)
    assert "\n" not in msg and message in msg and "every file was restored" in msg
    assert snapshot(root) == before
    assert runner.calls == [["update-grub"]]
    assert pending_reboot(h, paths) is False
    with pytest.raises(UsageError, match="nothing to roll back"):
        rollback(h, paths, runner)


def test_plan_outdated_by_a_concurrent_edit_is_refused(tmp_path):
    root = boot_host(tmp_path, "debian")
    h, paths = setup(root)
    plan = make_plan(h, INTEL, NONE)
    (root / "etc/default/grub").write_text(DEBIAN_GRUB + "GRUB_TIMEOUT=1\n")
    with pytest.raises(HostError, match="changed since the plan was made"):
        apply_plan(h, plan, paths, FakeRunner())


def test_modes_are_kept(tmp_path):
    root = boot_host(tmp_path, "debian")
    os.chmod(root / "etc/default/grub", 0o640)
    h, paths = setup(root)
    apply_plan(h, make_plan(h, INTEL, NONE), paths, FakeRunner())
    assert os.stat(root / "etc/default/grub").st_mode & 0o7777 == 0o640
    assert os.stat(root / "etc/modules-load.d/vfio.conf").st_mode & 0o7777 == 0o644
    assert not [n for n in os.listdir(root / "etc/default") if n.endswith(".passthru")], "no temp files left"


# -- rollback ---------------------------------------------------------------------------------------------------
def test_rollback_restores_and_removes_created_files(tmp_path):
    root = boot_host(tmp_path, "debian")
    h, paths = setup(root)
    before = snapshot(root)
    runner = FakeRunner()
    applied = apply_plan(h, make_plan(h, INTEL, PrepareOptions(gpu=True)), paths, runner, now=1_700_000_000)
    result = rollback(h, paths, runner, now=1_700_000_100)
    assert snapshot(root) == before
    assert result.status == "restored" and result.reboot_needed and result.backup_dir == applied.backup_dir
    assert sorted(result.files) == ["/etc/default/grub", "/etc/modules-load.d/vfio.conf"]
    assert runner.calls == [["update-grub"], ["update-grub"]] and result.commands_run == [["update-grub"]]
    manifest = json.loads((Path(applied.backup_dir) / "manifest.json").read_text())
    assert manifest["status"] == "rolled-back"
    assert json.loads((Path(paths.state_dir) / "reboot-required").read_text())["action"] == "rollback"
    with pytest.raises(UsageError, match="nothing to roll back"):
        rollback(h, paths, runner)
    assert "Restored" in format_result(result)


def test_rollback_walks_back_one_apply_at_a_time(tmp_path):
    root = boot_host(tmp_path, "debian")
    h, paths = setup(root)
    original = snapshot(root)
    runner = FakeRunner()
    apply_plan(h, make_plan(h, INTEL, NONE), paths, runner, now=1_700_000_000)
    first = snapshot(root)
    apply_plan(h, make_plan(h, INTEL, PrepareOptions(gpu=True, hugepages=("1G", 8))), paths, runner,
               now=1_700_000_000)  # same second: a second backup directory all the same
    assert len(os.listdir(Path(paths.state_dir) / "backups")) == 2
    assert "hugepages=8" in grub_line(root)
    rollback(h, paths, runner)
    assert snapshot(root) == first
    rollback(h, paths, runner)
    assert snapshot(root) == original


def test_rollback_refuses_when_a_file_changed_after_the_apply(tmp_path):
    root = boot_host(tmp_path, "debian")
    h, paths = setup(root)
    runner = FakeRunner()
    apply_plan(h, make_plan(h, INTEL, NONE), paths, runner)
    edited = read(root, "/etc/default/grub") + "GRUB_TIMEOUT=2\n"
    (root / "etc/default/grub").write_text(edited)
    with pytest.raises(HostError, match=r"cannot roll back: /etc/default/grub changed after .*restore by hand"):
        rollback(h, paths, runner)
    assert read(root, "/etc/default/grub") == edited and (root / "etc/modules-load.d/vfio.conf").exists()


# -- host roots other than / ------------------------------------------------------------------------------------
def test_non_live_root_writes_files_and_skips_commands(tmp_path):
    root = boot_host(tmp_path, "debian")
    h, paths = setup(root)
    result = apply_plan(h, make_plan(h, INTEL, NONE), paths)
    assert result.status == "changed" and result.commands_run == [] and result.commands_skipped == [["update-grub"]]
    assert "intel_iommu=on" in grub_line(root)
    assert "Not run: update-grub" in format_result(result)
    with pytest.raises(UsageError, match="refusing to run boot commands"):
        apply_plan(h, make_plan(h, INTEL, PrepareOptions(gpu=True)), paths, SubprocessRunner())
    assert "nouveau" not in grub_line(root)
    assert rollback(h, paths).commands_skipped == [["update-grub"]]


def test_subprocess_runner_uses_argument_lists_and_timeouts(tmp_path):
    r = SubprocessRunner()
    assert r.run(["sh", "-c", "echo out; echo err >&2; exit 3"], 10) == (3, "out\n", "err\n")
    assert r.run(["passthru-no-such-program"], 10)[0] == 127
    rc, _, err = r.run(["sleep", "5"], 0.2)
    assert rc == 124 and "timed out" in err


# -- the reboot flag --------------------------------------------------------------------------------------------
def test_pending_reboot_by_boot_id(tmp_path):
    root = boot_host(tmp_path, "debian", boot_id="6c1a0f7e-1111-4bd0-9c6e-2b7f6f0e1c11")
    h, paths = setup(root)
    assert pending_reboot(h, paths) is False
    apply_plan(h, make_plan(h, INTEL, NONE), paths, FakeRunner())
    assert pending_reboot(h, paths) is True
    (root / "proc/sys/kernel/random/boot_id").write_text("0b9e2f4c-2222-4d0e-8f43-52c0a1f7d9e3\n")
    assert pending_reboot(h, paths) is False


def test_pending_reboot_by_running_cmdline(tmp_path):
    root = boot_host(tmp_path, "debian")
    h, paths = setup(root)
    apply_plan(h, make_plan(h, INTEL, NONE), paths, FakeRunner())
    assert pending_reboot(h, paths) is True
    (root / "proc/cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz root=/dev/sda2 ro intel_iommu=on,sm_on iommu=pt\n")
    assert pending_reboot(h, paths) is False
    (Path(paths.state_dir) / "reboot-required").write_text("{not json")
    assert pending_reboot(h, paths) is None


def test_missing_args():
    assert missing_args("intel_iommu=on,igfx_off iommu=pt".split(), ["intel_iommu=on", "iommu=pt"]) == []
    assert missing_args("iommu=pt iommu=soft".split(), ["iommu=pt"]) == ["iommu=pt"], "the last one counts"
    assert missing_args("rdblacklist=radeon,nouveau".split(), ["rdblacklist=nouveau"]) == []
    assert missing_args([], ["hugepages=4"]) == ["hugepages=4"]


# -- modules-load.d ---------------------------------------------------------------------------------------------
def test_edit_modules():
    assert edit_modules(None, (6, 1)).endswith(MODS_61) and edit_modules(None, (6, 8)).endswith(MODS_68)
    mine = "# mine\nkvmgt\nvfio-pci\nvfio_virqfd\n"
    assert edit_modules(mine, (6, 8)) == "# mine\nkvmgt\nvfio-pci\nvfio\nvfio_iommu_type1\n"
    assert edit_modules(mine, (6, 1)) == mine + "vfio\nvfio_iommu_type1\n"
    assert edit_modules(mine, None) == mine + "vfio\nvfio_iommu_type1\n"
    assert edit_modules("vfio", (6, 8)) == "vfio\nvfio_iommu_type1\nvfio_pci\n"


# -- other facts the plan reports -------------------------------------------------------------------------------
def test_unknown_loader_still_prepares_modules_and_says_what_to_add(tmp_path):
    root = boot_host(tmp_path, "unknown")
    h, paths = setup(root)
    plan = make_plan(h, AMD, PrepareOptions(gpu=True))
    assert plan.loader is None and plan.commands == []
    assert [c.path for c in plan.changes] == ["/etc/modules-load.d/vfio.conf"]
    assert any("by hand: iommu=pt rdblacklist=nouveau nouveau.modeset=0" in m for m in plan.manual)
    assert "By hand:" in format_plan(plan)


def test_gpu_server_fixture_plan(gpu_server):
    """The docs' fixture host has no /etc: the plan says so and still works (the docs run it)."""
    plan = make_plan(HostRoot(gpu_server), INTEL, PrepareOptions(gpu=True, hugepages=("1G", 16)))
    assert plan.loader is None and plan.changed
    doc = json.loads(json.dumps(plan.to_json()))
    assert doc["schema"] == 1 and doc["options"]["hugepages"] == "1G:16" and doc["changes"][0]["created"]


def test_amd_iommu_off_is_reported(tmp_path):
    root = boot_host(tmp_path, "debian", cpu="amd", cmdline="BOOT_IMAGE=/boot/vmlinuz root=/dev/sda2 amd_iommu=off")
    plan = make_plan(HostRoot(root), AMD, NONE)
    assert any("amd_iommu=off" in n for n in plan.notes)


def test_diff_shows_every_change(tmp_path):
    root = boot_host(tmp_path, "debian")
    plan = make_plan(HostRoot(root), INTEL, NONE)
    grub, mods = plan.changes
    assert grub.diff.startswith("--- /etc/default/grub\n+++ /etc/default/grub\n")
    assert '-GRUB_CMDLINE_LINUX=""\n+GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n' in grub.diff
    assert mods.created and mods.diff.startswith("--- /dev/null\n+++ /etc/modules-load.d/vfio.conf\n")
    text = format_plan(plan)
    assert "update-grub" in text and "Dry run: nothing was changed" in text


# -- properties of the argument edit ----------------------------------------------------------------------------
OUR_KEYS = ("intel_iommu", "iommu", "vfio_iommu_type1.allow_unsafe_interrupts", "rdblacklist", "nouveau.modeset",
            "default_hugepagesz", "hugepagesz", "hugepages")
value = st.sampled_from(["on", "off", "pt", "soft", "1", "0", "1G", "2M", "16", "nouveau", "radeon", "igfx_off",
                         "on,sm_on", "nouveau,radeon"])
ours = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(OUR_KEYS), value)
others = st.one_of(st.sampled_from(["quiet", "splash", "ro", "rhgb", "nomodeset", "console=ttyS0,115200n8",
                                    "root=UUID=5d4c", "crashkernel=auto", "$vt_handoff", "rd.lvm.lv=rhel/root",
                                    'dyndbg="file x.c +p"']),
                   st.from_regex(r"[a-z][a-z0-9_.]{0,8}(=[a-z0-9,/:.]{1,8})?", fullmatch=True))
tokens = st.lists(st.one_of(ours, others), max_size=14)
option_sets = st.builds(PrepareOptions, gpu=st.booleans(),
                        hugepages=st.one_of(st.none(), st.tuples(st.sampled_from(["2M", "1G"]),
                                                                 st.integers(1, 4096))),
                        unsafe_interrupts=st.booleans())
facts_s = st.builds(HostFacts, st.sampled_from(["intel", "amd", None]), st.just((6, 8)),
                    st.sampled_from([True, False, None]))


def _not_ours(toks, desired, remove=()):
    keys = {t.split("=", 1)[0] for t in desired} | set(remove)
    return [t for t in toks if t.split("=", 1)[0] not in keys]


@settings(max_examples=300, deadline=None)
@given(tokens, facts_s, option_sets)
def test_edit_args_idempotent_and_keeps_other_args_in_order(toks, facts, opts):
    desired, remove = desired_kernel_args(facts, opts), unwanted_kernel_args(facts, opts)
    once = edit_args(toks, desired, remove)
    assert edit_args(once, desired, remove) == once
    assert _not_ours(once, desired, remove) == _not_ours(toks, desired, remove)
    assert not missing_args(once, desired), "every desired argument is in force"
    assert not any(t.split("=", 1)[0] in remove for t in once)
    for k in {d.split("=", 1)[0] for d in desired} - {"rdblacklist"}:
        assert sum(t.split("=", 1)[0] == k for t in once) == 1, f"{k} collapsed to one"


@settings(max_examples=200, deadline=None)
@given(tokens, st.sampled_from(['"', "'", ""]), facts_s, option_sets, st.sampled_from(["", "   # note", " "]))
def test_grub_edit_twice_equals_once(toks, quote, facts, opts, comment):
    if quote == "'":
        toks = [t for t in toks if "'" not in t]
    if quote == "":
        toks = [t for t in toks if '"' not in t][:1]
    src = " ".join(t.replace('"', '\\"') if quote == '"' else t for t in toks)
    text = f"# top\nGRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX={quote}{src}{quote}{comment}\nGRUB_TIMEOUT=5\n"
    desired, remove = desired_kernel_args(facts, opts), unwanted_kernel_args(facts, opts)
    once = edit_grub_default(text, desired, remove)
    assert edit_grub_default(once, desired, remove) == once
    var = find_grub_var(once, "GRUB_CMDLINE_LINUX")
    assert var is not None and var.problem is None
    before = split_args(src, escaped_quotes=quote == '"')
    assert _not_ours(var.args(), desired, remove) == _not_ours(before, desired, remove)
    lines_before, lines_after = text.splitlines(), once.splitlines()
    assert [lines_after[i] for i in (0, 1, 3)] == [lines_before[i] for i in (0, 1, 3)]
    assert lines_after[2].endswith(comment) or once == text


@settings(max_examples=100, deadline=None)
@given(tokens, facts_s, option_sets)
def test_kernel_cmdline_edit_twice_equals_once(toks, facts, opts):
    desired, remove = desired_kernel_args(facts, opts), unwanted_kernel_args(facts, opts)
    text = " ".join(toks) + "\n"
    once = edit_kernel_cmdline(text, desired, remove)
    assert edit_kernel_cmdline(once, desired, remove) == once
    assert re.fullmatch(r"[^\n]*\n", once)
