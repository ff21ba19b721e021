"""tests/host_guard.py refuses, inside every non-lab test, what would change the real host."""

import os
import subprocess
import sys

import pytest

import host_guard


def test_writes_under_the_hosts_kernel_and_system_paths_are_refused(tmp_path):
    (tmp_path / "to-sys").symlink_to("/sys")
    attempts = [
        lambda: open("/sys/passthru-guard-test", "w"),
        lambda: open("/proc/passthru-guard-test", "a"),
        lambda: os.open("/etc/passthru-guard-test", os.O_WRONLY | os.O_CREAT),
        lambda: open(tmp_path / "to-sys" / "passthru-guard-test", "w"),  # a fixture's link into the real /sys
        lambda: os.mkdir("/lib/modules/passthru-guard-test"),
        lambda: os.remove("/etc/passthru-guard-test"),
        lambda: os.rename(tmp_path / "x", "/boot/passthru-guard-test"),
        lambda: os.symlink("/tmp", "/dev/passthru-guard-test"),
        lambda: os.chmod("/var/lib/passthru/passthru-guard-test", 0o600),
    ]
    with host_guard.expect() as e:
        for attempt in attempts:
            with pytest.raises(host_guard.HostTouched, match="may not touch the real host"):
                attempt()
    assert len(e.seen) == len(attempts)
    assert "/sys/passthru-guard-test" in e.seen[3]


def test_reads_fixture_writes_and_the_allowed_devices_pass(tmp_path):
    with host_guard.expect() as e:
        with open("/proc/self/status") as f:
            assert f.read()
        with open("/dev/null", "w") as f:
            f.write("x")
        (tmp_path / "sys" / "bus").mkdir(parents=True)
        (tmp_path / "sys" / "bus" / "x").write_text("1")
        os.rename(tmp_path / "sys" / "bus" / "x", tmp_path / "sys" / "bus" / "y")
        (tmp_path / "fd").mkdir()
        os.symlink("/dev/ttyS1", tmp_path / "fd" / "0")  # a fixture's /proc/<pid>/fd link: its name is ours
        os.remove(tmp_path / "fd" / "0")
    assert e.seen == []


def test_the_cli_against_the_real_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("PASSTHRU_ROOT", raising=False)
    cli = [sys.executable, "-m", "passthru"]
    with host_guard.expect() as e:
        with pytest.raises(host_guard.HostTouched, match="against the real root"):
            subprocess.run([*cli, "bind", "0000:01:00.0"], timeout=60, check=False)
    assert len(e.seen) == 1
    problem = host_guard._cli_root_problem
    assert problem([*cli, "--root", "/", "devices"], {}) is not None
    assert problem(["/usr/bin/passthru", "restore", "--all"], {"PASSTHRU_ROOT": "/"}) is not None
    assert problem([*cli, "--state-dir", str(tmp_path), "devices"], {}) is not None  # still reads and writes /
    assert problem([*cli, "--root", str(tmp_path), "bind", "x"], {}) is None
    assert problem([*cli, "--root=" + str(tmp_path), "bind", "x"], {}) is None
    assert problem([*cli, "devices"], {"PASSTHRU_ROOT": str(tmp_path)}) is None
    assert problem([*cli, "--version"], {}) is None and problem([*cli, "completion", "bash"], {}) is None
    assert problem(["ls", "/sys"], {}) is None and problem(["python", "-m", "pytest"], {}) is None
