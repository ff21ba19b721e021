"""The tools passthru asks to write: ``devlink`` (eswitch mode; pyroute2's devlink has no eswitch commands) and
``ovs-vsctl`` (hw-offload), each run by argument list, JSON output where there is one, bounded time. Tests give
fakes with the same methods."""

from __future__ import annotations

import json
import re
import subprocess

from ..errors import HostError

__all__ = ["ToolMissing", "run_tool", "Devlink", "Ovs", "TOOL_TIMEOUT"]

TOOL_TIMEOUT = 30.0


class ToolMissing(HostError):
    """A command-line tool passthru drives is not installed."""


def run_tool(argv: list[str], timeout: float, install: str) -> tuple[int, str, str]:
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                           check=False)
    except FileNotFoundError:
        raise ToolMissing(f"{argv[0]} not found: {install}") from None
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]}: no answer after {timeout:g} s"
    return p.returncode, p.stdout, p.stderr


def _err(stderr: str, rc: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return "; ".join(lines[-2:]) if lines else f"exit {rc}"


class Devlink:
    """``devlink`` (iproute2) by argument list with a timeout: the eswitch mode of a devlink handle. Tests replace
    :meth:`run`."""

    INSTALL = "install iproute2 (apt-get install iproute2 / dnf install iproute)"

    def __init__(self, timeout: float = TOOL_TIMEOUT) -> None:
        self.timeout = timeout

    def run(self, args: list[str]) -> tuple[int, str, str]:
        return run_tool(["devlink", *args], self.timeout, self.INSTALL)

    def eswitch_mode(self, handle: str) -> str:
        rc, out, err = self.run(["-j", "dev", "eswitch", "show", handle])
        if rc != 0:
            raise HostError(f"devlink dev eswitch show {handle}: {_err(err, rc)}")
        try:
            doc = json.loads(out)
            mode = doc["dev"][handle]["mode"]
        except (ValueError, KeyError, TypeError):
            m = re.search(r"\bmode (\S+)", out)  # a devlink without JSON output
            if not m:
                raise HostError(f"devlink dev eswitch show {handle}: no mode in its output {out.strip()!r}") from None
            mode = m.group(1)
        return str(mode)

    def set_eswitch_mode(self, handle: str, mode: str) -> None:
        rc, _, err = self.run(["dev", "eswitch", "set", handle, "mode", mode])
        if rc != 0:
            raise HostError(f"devlink dev eswitch set {handle} mode {mode}: {_err(err, rc)}")


class Ovs:
    """``ovs-vsctl`` by argument list with a timeout: ``other_config:hw-offload``. Tests replace :meth:`run`."""

    INSTALL = ("install Open vSwitch (Debian/Ubuntu: apt-get install openvswitch-switch; RHEL/Fedora: "
               "dnf install openvswitch) and start it")

    def __init__(self, timeout: float = TOOL_TIMEOUT) -> None:
        self.timeout = timeout

    def run(self, args: list[str]) -> tuple[int, str, str]:
        return run_tool(["ovs-vsctl", f"--timeout={int(self.timeout)}", *args], self.timeout + 5, self.INSTALL)

    def hw_offload(self) -> bool:
        rc, out, err = self.run(["--if-exists", "get", "Open_vSwitch", ".", "other_config:hw-offload"])
        if rc != 0:
            raise HostError(f"ovs-vsctl get Open_vSwitch . other_config:hw-offload: {_err(err, rc)} (is "
                            "ovs-vswitchd running? systemctl start openvswitch-switch)")
        return out.strip().strip('"').lower() == "true"

    def set_hw_offload(self, on: bool = True) -> None:
        value = "true" if on else "false"
        rc, _, err = self.run(["set", "Open_vSwitch", ".", f"other_config:hw-offload={value}"])
        if rc != 0:
            raise HostError(f"ovs-vsctl set Open_vSwitch . other_config:hw-offload={value}: {_err(err, rc)}")
