"""Checks of rendered VM arguments against the real tools: qemu-system-x86_64 (started paused with QMP on stdio)
and libvirt's virt-xml-validate. Used by tests/test_vm_render.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET

QEMU = shutil.which("qemu-system-x86_64")
VIRT_XML_VALIDATE = shutil.which("virt-xml-validate")
# qdev options every -device takes that `-device DRIVER,help` does not list
GENERIC_DEVICE_OPTS = {"id", "bus", "driver"}


def split_opts(s: str) -> tuple[str, dict[str, str]]:
    """QEMU's ``first,key=value,...`` parsed back (a doubled comma is a literal one)."""
    parts, cur, i = [], "", 0
    while i < len(s):
        if s[i] == ",":
            if s[i + 1:i + 2] == ",":
                cur, i = cur + ",", i + 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += s[i]
        i += 1
    parts.append(cur)
    return parts[0], dict(p.split("=", 1) for p in parts[1:])


def devices(argv: list[str]) -> list[tuple[str, dict[str, str]]]:
    return [split_opts(argv[i + 1]) for i, a in enumerate(argv) if a == "-device"]


def run_paused(argv: list[str], machine: str, commands: list[dict], timeout: float = 30) -> tuple[int, list, str]:
    """Start QEMU paused (TCG, no default devices) with ``argv`` appended, send QMP ``commands`` on stdio after
    qmp_capabilities and end with quit. Returns (exit code, the replies as JSON objects, stderr)."""
    cmd = [QEMU or "qemu-system-x86_64", "-accel", "tcg", "-M", machine, "-m", "64", "-nodefaults",
           "-display", "none", "-S", "-qmp", "stdio", *argv]
    lines = [{"execute": "qmp_capabilities"}, *commands, {"execute": "quit"}]
    r = subprocess.run(cmd, input="".join(json.dumps(c) + "\n" for c in lines), capture_output=True, text=True,
                       timeout=timeout)
    replies = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r.returncode, replies, r.stderr


def peripheral_ids(argv: list[str], machine: str) -> set[str]:
    """The ids under /machine/peripheral of a QEMU started with ``argv``; AssertionError with QEMU's stderr if it
    refused the arguments."""
    rc, replies, err = run_paused(argv, machine, [{"execute": "qom-list",
                                                   "arguments": {"path": "/machine/peripheral"}}])
    assert rc == 0, f"qemu refused the arguments (rc {rc}): {err.strip()}"
    lists = [r["return"] for r in replies if isinstance(r.get("return"), list)]
    assert lists, f"no qom-list reply: {replies}"
    return {p["name"] for p in lists[0] if p["type"].startswith("child<")}


def driver_props(driver: str) -> set[str]:
    """Property names of a QEMU device type, from ``-device DRIVER,help`` (lines ``  name=<type> ...``)."""
    r = subprocess.run([QEMU or "qemu-system-x86_64", "-device", f"{driver},help"], capture_output=True,
                       text=True, timeout=30)
    props = {m.group(1) for m in re.finditer(r"^\s+([A-Za-z0-9_.-]+)=<", r.stdout, re.M)}
    assert props, f"no properties parsed from `-device {driver},help`: {r.stdout[:200]} {r.stderr[:200]}"
    return props


def unknown_props(argv: list[str], driver: str, known: set[str]) -> list[str]:
    """``driver=key`` for every property of ``driver`` devices in ``argv`` that QEMU does not know."""
    return [f"{drv}.{k}" for drv, props in devices(argv) if drv == driver for k in props
            if k not in known | GENERIC_DEVICE_OPTS]


def without_other_devices(argv: list[str], driver: str, keep: int) -> list[str]:
    """``argv`` with every ``-device driver,...`` dropped except the ``keep``-th one (0-based)."""
    out, n, i = [], 0, 0
    while i < len(argv):
        if argv[i] == "-device" and split_opts(argv[i + 1])[0] == driver:
            if n == keep:
                out += argv[i:i + 2]
            n, i = n + 1, i + 2
            continue
        out.append(argv[i])
        i += 1
    return out


class Pty:
    """A real pseudo-terminal for ``-chardev serial,path=``; ``link`` is a symlink to it in a directory whose name
    has a comma (QEMU's option escaping is then exercised too)."""

    def __init__(self, tmp: str) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        d = os.path.join(tmp, "tty,dir")
        os.makedirs(d, exist_ok=True)
        self.link = os.path.join(d, f"pty{self.slave}")
        os.symlink(self.path, self.link)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def domain_xml(fragment: str, machine: str, override: str | None = None) -> str:
    """A minimal full KVM domain around a ``<devices>`` fragment (and a ``<qemu:override>``)."""
    ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")
    dom = ET.Element("domain", type="kvm")
    ET.SubElement(dom, "name").text = "passthru-test"
    ET.SubElement(dom, "memory", unit="MiB").text = "1024"
    ET.SubElement(dom, "vcpu").text = "2"
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine=machine).text = "hvm"
    dom.append(ET.fromstring(fragment))
    if override:
        dom.append(ET.fromstring(override))
    return ET.tostring(dom, encoding="unicode")


def validate_domain(xml: str) -> tuple[int, str]:
    """``virt-xml-validate FILE domain`` on ``xml``: (exit code, output)."""
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(xml)
    try:
        r = subprocess.run([VIRT_XML_VALIDATE or "virt-xml-validate", f.name, "domain"], capture_output=True,
                           text=True, timeout=60)
    finally:
        os.unlink(f.name)
    return r.returncode, r.stdout + r.stderr
