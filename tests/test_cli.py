"""The CLI as an operator uses it: tables, --json, filters, errors (one line, exit 2), and the fast JSON path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from passthru.cli import main as cli_main
from passthru.service.fastpath import _parse_fast, fast_main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_devices_table(capsys, gpu_server):
    rc, out, err = run(capsys, "--root", str(gpu_server), "devices")
    assert rc == 0 and err == ""
    assert "IOMMU off" not in out
    row = next(line for line in out.splitlines() if line.startswith("0000:19:00.0"))
    assert "gpu" in row and "vfio-pci" in row and "10de:1b06" in row and "with 19:00.1" in row
    assert "GP102 [GeForce GTX 1080 Ti]" in row
    assert not any(line.startswith("0000:17:00.0") for line in out.splitlines()), "bridges hidden by default"
    assert "1-1.3" in out and "/dev/ttyS4" in out and "/dev/ttyS1" not in out
    rc, out, _ = run(capsys, "--root", str(gpu_server), "devices", "--all")
    assert any(line.startswith("0000:17:00.0") for line in out.splitlines())


def test_no_iommu_is_said_first(capsys, bare_host):
    rc, out, _ = run(capsys, "--root", str(bare_host), "devices")
    assert rc == 0 and out.splitlines()[0].startswith("! IOMMU off")
    rc, out, _ = run(capsys, "--root", str(bare_host), "groups")
    assert rc == 0 and "IOMMU off" in out


def test_devices_json_kind_filter(capsys, gpu_server):
    rc, out, _ = run(capsys, "--root", str(gpu_server), "devices", "--kind", "gpu", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["schema"] == 1 and doc["iommu"]["enabled"] is True and doc["iommu"]["vendor"] == "intel"
    assert {d["kind"] for d in doc["devices"]} == {"gpu"}
    by = {d["id"]: d for d in doc["devices"]}
    g = by["0000:19:00.0"]
    assert (g["vendor"], g["device"], g["class"], g["revision"], g["driver_override"]) == ("10de", "1b06", "030000",
                                                                                          "a1", "vfio-pci")
    assert g["companions"] == ["0000:19:00.1"] and by["0000:19:00.1"]["companion_of"] == "0000:19:00.0"
    assert g["numa_node"] == 0 and by["0000:86:00.0"]["numa_node"] == 1
    assert g["class_name"] == "VGA compatible controller" and g["vendor_name"] == "NVIDIA Corporation"


def test_unknown_kind_is_one_line_exit_2(capsys, gpu_server):
    rc, out, err = run(capsys, "--root", str(gpu_server), "devices", "--kind", "fpga")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "unknown kind 'fpga'" in err and "gpu" in err


def test_custom_models_override_builtin_kinds(capsys, gpu_server):
    conf = gpu_server / "etc/passthru"
    conf.mkdir(parents=True)
    (conf / "models.toml").write_text('[models.t4-card]\nvendor = "10de"\ndevice = "1eb8"\nkind = "inference"\n')
    rc, out, _ = run(capsys, "--root", str(gpu_server), "devices", "--kind", "inference", "--json")
    (dev,) = json.loads(out)["devices"]
    assert rc == 0 and dev["address"] == "0000:af:00.0" and dev["model"] == "t4-card"
    (conf / "models.toml").write_text('[models.gpu]\nvendor = "10de"\ndevice = "1eb8"\n')
    rc, out, err = run(capsys, "--root", str(gpu_server), "devices")
    assert rc == 2 and "built-in kind" in err and err.count("\n") == 1


def test_groups(capsys, broken_desktop):
    rc, out, _ = run(capsys, "--root", str(broken_desktop), "groups", "--json")
    doc = json.loads(out)
    g = next(g for g in doc["groups"] if any(d["address"] == "0000:03:00.0" for d in g["devices"]))
    assert g["viable"] is False and "0000:05:00.0" in g["blockers"]
    rc, out, _ = run(capsys, "--root", str(broken_desktop), "groups")
    assert rc == 0 and "groups," in out.splitlines()[-1] and "viable" in out


def test_show_pci_usb_serial(capsys, gpu_server):
    rc, out, _ = run(capsys, "--root", str(gpu_server), "show", "18:00.0", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["device"]["address"] == "0000:18:00.0"
    assert doc["group"]["viable"] is False and doc["group"]["blockers"] == ["0000:18:00.0", "0000:18:00.1"]
    assert [m["address"] for m in doc["group"]["mates"]] == ["0000:18:00.1"]
    rc, out, _ = run(capsys, "--root", str(gpu_server), "show", "1-1.3", "--json")
    assert json.loads(out)["device"]["serial"] == "A50285BI"
    rc, out, _ = run(capsys, "--root", str(gpu_server), "show", "ttyS4")
    assert rc == 0 and "0000:03:00.0" in out


@pytest.mark.parametrize("ident, message", [
    ("42:00", "not a PCI address"),
    ("0000:99:00.0", "no PCI device 0000:99:00.0"),
    ("9-9", "no USB device at port 9-9"),
    ("ttyS1", "ghost port"),
    ("ttyS9", "no serial port /dev/ttyS9"),
])
def test_show_errors(capsys, gpu_server, ident, message):
    rc, out, err = run(capsys, "--root", str(gpu_server), "show", ident)
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1


def test_usb_and_serial_json(capsys, gpu_server):
    rc, out, _ = run(capsys, "--root", str(gpu_server), "usb", "--json")
    usb = {u["port_path"]: u for u in json.loads(out)["usb"]}
    assert usb["usb1"]["is_root_hub"] and usb["1-1.1"]["port"] == "1.1" and usb["1-2"]["product"] == "5581"
    assert usb["1-2"]["dev_path"].startswith("/dev/bus/usb/001/")
    rc, out, _ = run(capsys, "--root", str(gpu_server), "serial", "--json")
    ports = {p["name"]: p for p in json.loads(out)["serial"]}
    assert ports["ttyS0"]["console"] and ports["ttyS2"]["ghost"]
    assert ports["ttyS4"]["backing"] == {"bus": "pci", "address": "0000:03:00.0"}


@pytest.mark.parametrize("argv", [
    ["devices", "--json"], ["devices", "--kind", "nic", "--json"], ["devices", "--json", "-k=gpu"],
    ["devices", "--all", "--json", "-k", "usb"], ["groups", "--json"], ["usb", "--json"], ["serial", "--json"],
])
def test_fast_path_prints_exactly_what_the_cli_prints(capsys, gpu_server, argv):
    full = ["--root", str(gpu_server), *argv]
    if argv == ["devices", "--json", "-k=gpu"]:
        assert _parse_fast(full) is None  # not a form the fast path takes: Typer handles it
        return
    assert _parse_fast(full) is not None
    assert fast_main(full) == 0
    fast_out = capsys.readouterr().out
    rc, slow_out, _ = run(capsys, *full)
    assert rc == 0 and fast_out == slow_out and json.loads(fast_out)["schema"] == 1


@pytest.mark.parametrize("argv", [
    ["devices"], ["devices", "--json", "--bogus"], ["--root"], ["--help"], ["show", "x", "--json"],
    ["devices", "--kind", "--json"], ["--root=", "devices", "--json"], ["groups", "--json", "--json"],
])
def test_fast_path_declines_everything_else(argv):
    assert _parse_fast(argv) is None


def test_whole_process_errors_and_exit_codes(gpu_server, tmp_path):
    env = dict(os.environ, PASSTHRU_ROOT=str(gpu_server))
    p = subprocess.run([sys.executable, "-m", "passthru", "devices", "--kind", "nope", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.startswith("passthru: unknown kind")
    p = subprocess.run([sys.executable, "-m", "passthru", "devices", "--bogus"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "No such option: --bogus" in p.stderr
    p = subprocess.run([sys.executable, "-m", "passthru", "devices", "--json"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and len(json.loads(p.stdout)["devices"]) > 40
    p = subprocess.run([sys.executable, "-m", "passthru", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Examples" in p.stdout and "devices" in p.stdout
