"""The lab's early-boot watchdog, with a stand-in for QEMU (no guest boots here).

A TCG guest once stalled in its kernel's early boot in CI (a vCPU idle in HLT whose timer never fired; RCU stall
warnings for 20 minutes). ``Lab.run`` kills a boot that has not started the script within ``start_timeout`` and boots
once more; it never boots again once the script may have begun.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from .build import LabImage
from .vm import Lab, LabError

# prints what the real guest would on its console, as the mode for this boot (by count) says
FAKE_QEMU = r'''
import os, re, sys, time
state = os.environ["FAKE_QEMU_STATE"]
modes = os.environ["FAKE_QEMU_MODES"].split(",")
n = int(open(state).read()) if os.path.exists(state) else 0
open(state, "w").write(str(n + 1))
mode = modes[min(n, len(modes) - 1)]
nonce = re.search(r"passthru\.nonce=(\w+)", sys.argv[sys.argv.index("-append") + 1]).group(1)
out = sys.stdout.buffer
def say(text, pause=0.0):
    out.write(text.encode()); out.flush(); time.sleep(pause)
say("[    0.000000] Linux version 6.1.0-lab\r\n")
if mode == "panic":
    sys.exit(0)
if mode == "stall":
    say("[   65.595316] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\r\n", 600)
say("passthru-lab: [3.1] run", 0.5 if mode == "split" else 0)
say("ning /lab-out/.lab/run.sh\r\n")
if mode == "hang":
    time.sleep(600)
say(f"PASSTHRU-LAB-END {nonce} rc=7\r\n")
'''


@pytest.fixture
def fake_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    qemu.chmod(qemu.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "boots"
    monkeypatch.setenv("FAKE_QEMU_STATE", str(state))
    kernel = tmp_path / "kernel-6.1.0-lab"
    image = LabImage("6.1.0-lab", kernel / "vmlinuz", kernel / "initrd", kernel / "lib/modules/6.1.0-lab/x/y",
                     tmp_path / "cache")
    lab = Lab(image, tmp_path / "venv", qemu=str(qemu))

    def run(modes: str, **kw):
        monkeypatch.setenv("FAKE_QEMU_MODES", modes)
        return lab.run("true", run_dir=tmp_path / "run", **kw)

    run.boots = lambda: int(state.read_text()) if state.exists() else 0  # type: ignore[attr-defined]
    run.run_dir = tmp_path / "run"  # type: ignore[attr-defined]
    return run


def test_a_boot_stalled_before_the_script_is_booted_again(fake_lab):
    r = fake_lab("stall,ok", timeout=60, start_timeout=1.5)
    assert r.rc == 7 and fake_lab.boots() == 2
    assert len(r.stalls) == 1 and "had not started the script after 2s" in r.stalls[0]
    kept = fake_lab.run_dir / "console-stall-1.log"
    assert "rcu_preempt detected stalls" in kept.read_text()
    assert "rcu_preempt" not in r.console  # the console is the boot that ran the script
    assert os.path.getsize(fake_lab.run_dir / "disk.img") > 0


def test_two_stalls_are_a_lab_error(fake_lab):
    with pytest.raises(LabError, match="stalled before running the script in 2 boots") as info:
        fake_lab("stall", timeout=60, start_timeout=1)
    assert "rcu_preempt detected stalls" in str(info.value)
    assert fake_lab.boots() == 2


def test_a_hang_after_the_script_started_is_never_booted_again(fake_lab):
    with pytest.raises(LabError, match="timed out after 4s"):
        fake_lab("hang,ok", timeout=4, start_timeout=1)
    assert fake_lab.boots() == 1


def test_the_start_line_may_come_in_two_reads(fake_lab):
    r = fake_lab("split", timeout=60, start_timeout=3)
    assert r.rc == 7 and r.stalls == [] and fake_lab.boots() == 1
    assert r.started_after is not None and 0.4 < r.started_after < r.duration


def test_a_timeout_shorter_than_the_watch_is_a_timeout(fake_lab):
    with pytest.raises(LabError, match="timed out after 1s"):
        fake_lab("stall,ok", timeout=1, start_timeout=240)
    assert fake_lab.boots() == 1


def test_a_guest_gone_before_its_script_is_not_waited_for(fake_lab):
    t0 = time.monotonic()
    with pytest.raises(LabError, match="ended without the end marker"):
        fake_lab("panic,ok", timeout=60, start_timeout=30)
    assert time.monotonic() - t0 < 15 and fake_lab.boots() == 1
