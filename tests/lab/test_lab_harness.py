"""The lab harness itself: statuses and files come back, failures are failures, and the lab is the real thing
(a kernel with an Intel IOMMU doing interrupt remapping, devices in their own IOMMU groups, SR-IOV that works).

These use plain guest commands only (no passthru CLI), so they say whether the lab works independently of the tool.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .guest import in_guest
from .vm import Lab, LabError

pytestmark = pytest.mark.lab


def test_exit_status_output_and_files_come_back(lab: Lab):
    r = lab.run("""
        echo before
        echo '{"answer": 42}' > answer.json
        python -c 'import sys; print(sys.prefix)' > prefix.txt
        env | grep -E '^(PATH|PASSTHRU_LAB_VENV|LAB_OUT)=' | sort > env.txt
        echo to-stderr >&2
        exit 3
    """)
    assert r.rc == 3, r.output
    assert "before" in r.output and "to-stderr" in r.output
    assert r.json("answer.json") == {"answer": 42}
    assert r.file("prefix.txt").strip() == str(lab.venv)
    env = r.file("env.txt")
    assert f"PATH={lab.venv}/bin:" in env
    assert f"PASSTHRU_LAB_VENV={lab.venv}" in env
    # the status is what a test asserting success sees: check() fails, with the output in the message
    with pytest.raises(AssertionError, match=r"exited 3[\s\S]*before"):
        r.check()
    # the kernel's boot log is on the console, never in the script's output
    assert "Linux version" in r.console and "Linux version" not in r.output
    # the early-boot watchdog saw /init start the script on the real console (else every boot would be killed)
    assert r.started_after is not None and 0 < r.started_after < r.duration and r.stalls == []


def test_timeout_kills_qemu_and_raises(lab: Lab):
    with pytest.raises(LabError, match="timed out after 3s"):
        lab.run("sleep 600", timeout=3)


def test_a_guest_kernel_crash_is_a_lab_error_and_keeps_earlier_files(lab: Lab):
    with pytest.raises(LabError, match="ended without the end marker") as info:
        lab.run("echo written-before > before.txt; sync; echo c > /proc/sysrq-trigger; sleep 60")
    assert "sysrq" in str(info.value).lower() or "panic" in str(info.value).lower()
    assert info.value.run_dir is not None
    assert (info.value.run_dir / "out" / "before.txt").read_text() == "written-before\n"


@in_guest("""
    echo out
    echo err >&2
    touch made-here
    exit 3
""")
def test_step_status_and_streams_are_separate(guest):
    assert guest.rc == 3
    assert guest.stdout == "out\n" and guest.stderr == "err\n"
    assert guest.path("made-here").exists()
    with pytest.raises(AssertionError, match="exited 3"):
        guest.check()


@in_guest("""
    ls /sys/class/iommu > iommu-units.txt
    dmesg > dmesg.txt
    cat /proc/cmdline > cmdline.txt
    ls /sys/kernel/iommu_groups | wc -l > groups-count.txt
""")
def test_the_lab_has_a_real_intel_iommu_with_irq_remapping(guest):
    guest.check()
    assert "dmar0" in guest.file("iommu-units.txt").split()
    dmesg = guest.file("dmesg.txt")
    assert "DMAR: IOMMU enabled" in dmesg
    assert "DMAR-IR: Enabled IRQ remapping" in dmesg
    assert "intel_iommu=on" in guest.file("cmdline.txt").split()
    assert int(guest.file("groups-count.txt")) >= 10


@in_guest("""
    for d in /sys/bus/pci/devices/*; do
        g=$(readlink "$d/iommu_group"); drv=$(readlink "$d/driver" || true)
        vf=$([ -e "$d/physfn" ] && echo vf || echo fn)
        echo "${d##*/} $(cat $d/vendor) $(cat $d/device) $(cat $d/class) ${g##*/} $vf ${drv##*/}"
    done > pci.txt
""")
def test_lab_devices_sit_in_their_own_iommu_groups(guest):
    guest.check()
    rows = [line.split() for line in guest.file("pci.txt").splitlines()]
    fns = {r[0]: {"ids": f"{r[1][2:]}:{r[2][2:]}", "class": r[3][2:6], "group": r[4], "vf": r[5] == "vf",
                  "driver": r[6] if len(r) > 6 else None} for r in rows}
    by_group: dict[str, list[str]] = {}
    for addr, f in fns.items():
        by_group.setdefault(f["group"], []).append(addr)

    def only(ids: str, cls: str | None = None) -> list[str]:  # physical functions only (another step makes VFs)
        return [a for a, f in fns.items() if f["ids"] == ids and (cls is None or f["class"] == cls) and not f["vf"]]

    boot_vga = only("1234:1111", "0300")
    gpu = only("1234:1111", "0380")
    audio = only("8086:293e", "0403")
    assert boot_vga == ["0000:00:02.0"] and len(gpu) == 1 and len(audio) == 1
    assert sorted(by_group[fns[gpu[0]]["group"]]) == sorted(gpu + audio), "GPU + HDMI audio: one group"
    nics, nvmes = only("8086:10d3"), only("1b36:0010")
    assert len(nics) == 2 and len(nvmes) == 2
    for addr in nics + nvmes + only("1b36:000d") + only("1b36:0002"):
        assert by_group[fns[addr]["group"]] == [addr], f"{addr} should be alone in its group"
    assert {fns[a]["driver"] for a in nics} == {"e1000e"}
    assert {fns[a]["driver"] for a in nvmes} == {"nvme"}


@in_guest("""
    pf=$(dirname "$(ls /sys/bus/pci/devices/*/sriov_totalvfs | head -n1)")
    echo "${pf##*/}" > pf.txt
    cat "$pf/sriov_totalvfs" > totalvfs.txt
    echo 2 > "$pf/sriov_numvfs"
    for v in "$pf"/virtfn*; do
        vf=$(readlink -f "$v"); phys=$(readlink -f "$vf/physfn")
        echo "${v##*/} ${vf##*/} ${phys##*/} $(cat $vf/reset_method)"
    done > vfs.txt
""")
def test_sriov_nvme_makes_vfs(guest):
    guest.check()
    pf = guest.file("pf.txt").strip()
    assert guest.file("totalvfs.txt").strip() == "2"
    rows = [line.split() for line in guest.file("vfs.txt").splitlines()]
    assert [r[0] for r in rows] == ["virtfn0", "virtfn1"]
    slot = pf.rsplit(".", 1)[0]
    assert [r[1] for r in rows] == [f"{slot}.1", f"{slot}.2"]
    assert all(r[2] == pf and r[3] == "flr" for r in rows)


@in_guest("""
    set -e
    dev=/dev/$(lsblk -dn -o NAME,SERIAL | awk '$2 == "lab-disk" { print $1 }')
    mkfs.ext4 -q "$dev"
    mkdir -p /mnt/lab
    mount "$dev" /mnt/lab
    findmnt -n -o SOURCE /mnt/lab > mounted.txt
    echo guest-only > /etc/passthru-lab-probe
    cat /etc/passthru-lab-probe > probe.txt
""")
def test_guest_writes_stay_in_the_guest(guest):
    guest.check()
    assert guest.file("mounted.txt").strip().startswith("/dev/nvme")
    assert guest.file("probe.txt").strip() == "guest-only"
    assert not Path("/etc/passthru-lab-probe").exists()


@in_guest("""
    python -c 'import sys, passthru; print(sys.prefix); print(passthru.__file__)'
""")
def test_guest_python_is_the_lab_venv_with_this_checkout(guest, lab: Lab):
    guest.check()
    prefix, module = guest.stdout.split()
    assert prefix == str(lab.venv)
    repo = Path(__file__).resolve().parents[2]
    assert Path(module).resolve().is_relative_to(repo / "src"), (module, repo)


def test_lab_env_var_selects_the_venv(monkeypatch, tmp_path):
    import sys

    from .vm import find_venv

    monkeypatch.setenv("PASSTHRU_LAB_VENV", str(tmp_path))
    assert find_venv() == tmp_path
    monkeypatch.delenv("PASSTHRU_LAB_VENV")
    repo_venv = Path(__file__).resolve().parents[2] / ".venv"
    assert find_venv() == (repo_venv if (repo_venv / "bin" / "python").exists() else Path(sys.prefix))


@in_guest("""
    modprobe vfio; modprobe vfio_iommu_type1; modprobe mdev; modprobe mtty
    ls /sys/class/mdev_bus/mtty/mdev_supported_types > mtty-types.txt
    modprobe psample; modprobe netdevsim
    echo "1 1" > /sys/bus/netdevsim/new_device
    ls /sys/bus/netdevsim/devices > nsim.txt
    cat /sys/bus/netdevsim/devices/netdevsim1/sriov_numvfs > nsim-numvfs.txt
""", boot="extra-modules")
def test_the_lab_builds_and_loads_mtty_and_netdevsim(guest):
    guest.check()
    assert guest.file("mtty-types.txt").split() == ["mtty-1", "mtty-2"]
    assert guest.file("nsim.txt").split() == ["netdevsim1"]
    assert int(guest.file("nsim-numvfs.txt")) == 0  # SR-IOV capable, no VFs yet
