"""A real, throwaway ``qemu-system-x86_64`` for QMP tests: q35, TCG, no disks, no display, paused (``-S``) unless
asked otherwise, a QMP unix socket in a temporary directory. Always ``stop()`` it (the fixtures do)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
NATIVE = ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]


def available() -> bool:
    return os.access(QEMU, os.X_OK)


class QemuProc:
    def __init__(self, workdir: Path, extra: list[str], *, native: bool = True, paused: bool = True) -> None:
        self.socket = str(workdir / "qmp.sock")
        self.log = workdir / "qemu.log"
        argv = [QEMU, "-accel", "tcg", "-M", "q35", "-m", "128", "-nodefaults", "-display", "none",
                "-qmp", f"unix:{self.socket},server=on,wait=off"]
        if paused:
            argv.append("-S")
        if native:
            argv += NATIVE
        self.argv = argv + extra
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self._listening():  # the socket file appears at bind(), a moment before listen()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"QEMU did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.01)

    def _listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.socket)
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a zombie QEMU; nothing more we can do
            pass
