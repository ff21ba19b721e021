"""The shipped systemd unit: rendered for this installation, accepted by `systemd-analyze verify`, installed
idempotently into a root's /etc/systemd/system."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from passthru.cli import main as cli_main
from passthru.config import Paths
from passthru.host.root import HostRoot
from passthru.units import install_units, render_units

PASSTHRU = str(Path(sys.executable).with_name("passthru"))


def test_unit_is_valid_for_systemd(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (apt install systemd)")
    text = render_units(Paths("/etc/passthru", "/var/lib/passthru"), PASSTHRU)["passthru-apply-boot.service"]
    assert f"ExecStart={PASSTHRU} apply-boot" in text and "Before=network-pre.target" in text
    unit = tmp_path / "passthru-apply-boot.service"
    unit.write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # and the check can fail: a unit whose program does not exist is rejected
    unit.write_text(text.replace(PASSTHRU, "/nonexistent/passthru"))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "/nonexistent/passthru" in p.stderr


def test_non_default_directories_reach_the_unit():
    text = render_units(Paths("/srv/pt/etc", "/srv/pt/state"), PASSTHRU)["passthru-apply-boot.service"]
    assert "Environment=PASSTHRU_CONFIG_DIR=/srv/pt/etc\n" in text
    assert "Environment=PASSTHRU_STATE_DIR=/srv/pt/state\n" in text
    assert "ConditionPathExistsGlob=|/srv/pt/etc/vfio.d/*.json" in text
    assert "ConditionPathExistsGlob=|/srv/pt/etc/mdev.d/*/*.json" in text  # persisted vGPUs alone start it too


def test_install_into_a_root_is_idempotent(tmp_path, capsys):
    h = HostRoot(tmp_path)
    paths = Paths("/etc/passthru", "/var/lib/passthru")
    assert install_units(h, paths, PASSTHRU) == [(str(tmp_path / "etc/systemd/system/passthru-apply-boot.service"),
                                                 "changed")]
    assert install_units(h, paths, PASSTHRU)[0][1] == "unchanged"
    assert os.stat(tmp_path / "etc/systemd/system/passthru-apply-boot.service").st_mode & 0o777 == 0o644
    assert cli_main(["--root", str(tmp_path), "units"]) == 0
    assert "# passthru-apply-boot.service" in capsys.readouterr().out


def test_agent_unit_is_valid_and_hardened(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (apt install systemd)")
    text = render_units(Paths("/etc/passthru", "/var/lib/passthru"), PASSTHRU)["passthru-agent.service"]
    assert f"ExecStart={PASSTHRU} serve\n" in text and "After=" in text and "passthru-apply-boot.service" in text
    for line in ("ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "RuntimeDirectory=passthru", "RuntimeDirectoryMode=0700", "UMask=0077",
                 "ReadWritePaths=-/var/lib/passthru -/etc/passthru -/run/passthru /sys",
                 "StateDirectory=passthru", "ConfigurationDirectory=passthru", "LimitNOFILE=8192"):
        assert line + "\n" in text, line
    caps = " ".join(ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("CapabilityBoundingSet="))
    assert {"CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_DAC_OVERRIDE"} <= set(caps.split())
    assert "ProtectKernelTunables" not in text  # /sys must stay writable: binding drivers is the job
    unit = tmp_path / "passthru-agent.service"
    unit.write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "ignoring" not in p.stderr, p.stderr  # every line understood
    # and the check reads the hardening lines: a bad value is reported
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=sideways"))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "protect system value, ignoring: sideways" in p.stderr


def test_agent_unit_with_other_directories():
    text = render_units(Paths("/srv/pt/etc", "/srv/pt/state"), PASSTHRU)["passthru-agent.service"]
    assert "Environment=PASSTHRU_CONFIG_DIR=/srv/pt/etc\n" in text
    assert "ReadWritePaths=-/srv/pt/state -/srv/pt/etc -/run/passthru /sys\n" in text
    assert "StateDirectory=" not in text and "ConfigurationDirectory=" not in text


def test_serve_installs_the_agent_unit(tmp_path, capsys):
    assert cli_main(["--root", str(tmp_path), "serve", "--install-unit"]) == 0
    path = tmp_path / "etc/systemd/system/passthru-agent.service"
    assert f"{path}: changed" in capsys.readouterr().out and " serve\n" in path.read_text()
    assert not (tmp_path / "etc/systemd/system/passthru-apply-boot.service").exists()
    assert cli_main(["--root", str(tmp_path), "serve", "--install-unit"]) == 0
    assert f"{path}: unchanged" in capsys.readouterr().out
    assert cli_main(["--root", str(tmp_path), "units"]) == 0
    assert "# passthru-agent.service" in capsys.readouterr().out
