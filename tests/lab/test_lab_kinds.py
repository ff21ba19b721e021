"""USB and serial kinds on a real kernel: the emulated tablet is listed by its port path, assigned, and the
`usb-host` argument from `passthru qemu-args` is accepted by a nested QEMU (which opens the device once running);
ttyS1 (a PCI serial port) is assigned and a nested QEMU starts with its chardev, ttyS0 (the console) is refused, and
a process holding ttyS1 open makes `assign` exit 2 naming it. Each step releases what it assigned."""

from __future__ import annotations

import json

import pytest

from .guest import GuestRun, in_guest

pytestmark = pytest.mark.lab

BOOT = "kinds"  # its own boot: the tablet is briefly taken from usbhid by the nested QEMU


def _replies(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _returns(text: str) -> list:
    return [r["return"] for r in _replies(text) if "return" in r]


@in_guest(r"""
passthru usb --json > usb.json
port=$(jq -r '.usb[] | select(.product_name == "QEMU USB Tablet") | .port_path' usb.json); echo "$port" > port.txt
readlink /sys/bus/usb/devices/$port:1.0/driver | xargs basename > driver.before
passthru doctor $port --json > doctor.json || true
passthru assign vmu usb:$port --json > assign.json
passthru qemu-args vmu > args.txt 2> notes.txt
# stopped (-S): the usb-host device exists; after `cont` QEMU's scan opens the host device (class 03, not a hub)
{ echo '{"execute":"qmp_capabilities"}'
  echo '{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}'
  echo '{"execute":"cont"}'; sleep 8
  echo '{"execute":"human-monitor-command","arguments":{"command-line":"info usb"}}'
  echo '{"execute":"quit"}'; } |
    timeout 120 qemu-system-x86_64 -accel tcg -M q35 -m 256 -nodefaults -display none -S $(cat args.txt) \
        -qmp stdio > qmp.out 2> qmp.err
passthru release vmu --json > release.json
sleep 1; readlink /sys/bus/usb/devices/$port:1.0/driver | xargs basename > driver.after || echo none > driver.after
""", boot=BOOT, timeout=240)
def test_usb_tablet_by_port_path_into_a_nested_qemu(guest: GuestRun):
    guest.check()
    port = guest.file("port.txt").strip()
    usb = {u["port_path"]: u for u in guest.json("usb.json")["usb"]}
    assert port == "1-2" and (usb[port]["vendor"], usb[port]["product"]) == ("0627", "0001")
    checks = {c["id"]: c for c in guest.json("doctor.json")["checks"] if c["device"] == port}
    assert "hostbus=1 hostport=2" in checks["usb.identity"]["evidence"]
    assert [a["device"] for a in guest.json("assign.json")["assignments"]] == [f"usb:{port}"]
    args = guest.file("args.txt")
    assert "usb-host,id=usb-1-2,hostbus=1,hostport=2" in args and "qemu-xhci" in args
    returns = _returns(guest.file("qmp.out"))
    peripherals = {p["name"] for r in returns if isinstance(r, list) for p in r}
    assert "usb-1-2" in peripherals, guest.file("qmp.out")[-2000:] + guest.file("qmp.err")
    info = "".join(r for r in returns if isinstance(r, str))
    assert "usb-1-2" in info and "QEMU USB Tablet" in info, info  # the host's tablet, opened by usb-host
    assert guest.json("release.json")["released"] == [f"usb:{port}"]
    assert guest.file("driver.before").strip() == guest.file("driver.after").strip() == "usbhid"


@in_guest(r"""
passthru serial --json > serial.json
passthru doctor ttyS1 ttyS0 --json > doctor.json || true
passthru assign vms serial:/dev/ttyS1 --json > assign.json
rc=0; passthru assign vms0 serial:/dev/ttyS0 > s0.out 2> s0.err || rc=$?; echo $rc > s0.rc
passthru qemu-args vms > args.txt
printf '%s\n' '{"execute":"qmp_capabilities"}' \
    '{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}' \
    '{"execute":"query-chardev"}' '{"execute":"quit"}' |
    timeout 90 qemu-system-x86_64 -accel tcg -M q35 -m 256 -nodefaults -display none -S $(cat args.txt) \
        -qmp stdio > qmp.out 2> qmp.err
passthru release vms --json > release.json
""", boot=BOOT, timeout=180)
def test_pci_serial_port_offered_console_refused_nested_qemu_has_the_chardev(guest: GuestRun):
    guest.check()
    ports = {p["name"]: p for p in guest.json("serial.json")["serial"]}
    assert ports["ttyS1"]["backing"]["bus"] == "pci" and ports["ttyS0"]["console"] is True
    checks = {(c["id"], c["device"]): c for c in guest.json("doctor.json")["checks"]}
    assert checks["serial.open", "/dev/ttyS1"]["status"] == "pass"
    assert checks["serial.console", "/dev/ttyS0"]["status"] == "fail"
    assert [a["device"] for a in guest.json("assign.json")["assignments"]] == ["serial:/dev/ttyS1"]
    assert int(guest.file("s0.rc")) == 2 and "console" in guest.file("s0.err")
    args = guest.file("args.txt")
    assert "-chardev serial,id=chr-ser-ttyS1,path=/dev/ttyS1" in args and "pci-serial,id=ser-ttyS1" in args
    returns = _returns(guest.file("qmp.out"))
    peripherals = {p["name"] for r in returns if isinstance(r, list) for p in r if "name" in p}
    assert "ser-ttyS1" in peripherals, guest.file("qmp.out")[-2000:] + guest.file("qmp.err")
    chardevs = {c["label"]: c["filename"] for r in returns if isinstance(r, list) for c in r if "label" in c}
    assert chardevs.get("chr-ser-ttyS1") == "serial", chardevs  # opened: a chardev whose open fails is no chardev
    assert guest.json("release.json")["released"] == ["serial:/dev/ttyS1"]


@in_guest(r"""
sleep 600 < /dev/ttyS1 & hp=$!
for i in $(seq 100); do
    [ "$(readlink /proc/$hp/fd/0)" = /dev/ttyS1 ] && [ "$(cat /proc/$hp/comm)" = sleep ] && break; sleep 0.1
done
echo $hp > pid.txt
rc=0; passthru assign vms2 serial:/dev/ttyS1 > held.out 2> held.err || rc=$?; echo $rc > held.rc
passthru doctor ttyS1 --json > doctor.json || true
passthru assignments vms2 --json > assignments.json
kill $hp; wait $hp 2>/dev/null || true
passthru assign vms2 serial:/dev/ttyS1 --json > after.json
passthru release vms2 --json > release.json
""", boot=BOOT, timeout=120)
def test_a_port_held_open_is_refused_naming_the_process(guest: GuestRun):
    guest.check()
    pid = int(guest.file("pid.txt"))
    assert int(guest.file("held.rc")) == 2
    err = guest.file("held.err").strip()
    assert err.count("\n") == 0 and f"serial:/dev/ttyS1: open by sleep (pid {pid})" in err, err
    f = next(c for c in guest.json("doctor.json")["checks"] if c["id"] == "serial.open")
    assert f["status"] == "fail" and f"sleep (pid {pid})" in f["evidence"]
    assert guest.json("assignments.json")["assignments"] == []  # nothing claimed
    assert [a["device"] for a in guest.json("after.json")["assignments"]] == ["serial:/dev/ttyS1"]
    assert guest.json("release.json")["released"] == ["serial:/dev/ttyS1"]
