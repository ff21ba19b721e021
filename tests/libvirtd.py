"""A private, real libvirtd for tests (Debian 12's libvirt 9.0 has the monolithic daemon, no virtqemud).

A root libvirtd keeps its domains, state and hooks in fixed places (/etc/libvirt, /var/lib/libvirt, /run/libvirt):
``--config`` only moves libvirtd.conf. So the daemon runs in its own mount namespace (``unshare --mount``) with
empty tmpfs over /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /run: the host's own
libvirt files and any system daemon stay untouched, and this daemon's domains vanish with it. Its sockets are in a
directory of the test (``unix_sock_dir``), so ``virsh -c qemu:///system?socket=...`` outside the namespace reaches
it. Its qemu.conf runs QEMU as root without a security driver and writes QEMU's output to files (no virtlogd).
``hook``: the text of /etc/libvirt/hooks/qemu inside the namespace (libvirt reads hooks only when it starts).

    with Libvirtd(tmp_path, hook=text) as d:
        d.virsh("define", "dom.xml").check_returncode()
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

__all__ = ["Libvirtd", "available", "why_not"]

LIBVIRTD = "/usr/sbin/libvirtd"

_INNER = """\
set -e
for d in /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /run; do
    mkdir -p "$d"; mount -t tmpfs -o mode=0755 tmpfs "$d"
done
mkdir -p /etc/libvirt/hooks /run/libvirt /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu
cp "$1/qemu.conf" /etc/libvirt/qemu.conf
if [ -f "$1/hook" ]; then cp "$1/hook" /etc/libvirt/hooks/qemu; chmod 0755 /etc/libvirt/hooks/qemu; fi
exec {libvirtd} --config "$1/libvirtd.conf" --pid-file "$1/libvirtd.pid"
"""

_QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
stdio_handler = "file"
"""


def why_not() -> str | None:
    """Why a private libvirtd cannot run here (None: it can)."""
    if not os.path.exists(LIBVIRTD) or shutil.which("virsh") is None:
        return "libvirtd/virsh not installed (scripts/install.sh --test: libvirt-daemon-system libvirt-daemon-driver-qemu)"
    if os.geteuid() != 0:
        return "a private system libvirtd needs root (a mount namespace and tmpfs mounts)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    return None


def available() -> bool:
    return why_not() is None


class Libvirtd:
    def __init__(self, tmp: Path, *, hook: str | None = None, start_timeout: float = 20) -> None:
        self.dir = Path(tmp) / "libvirtd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "sock"
        self.sock.mkdir(exist_ok=True)
        self.log = self.dir / "libvirtd.log"
        self.uri = f"qemu:///system?socket={self.sock}/libvirt-sock"
        self.hook = hook
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.timings: list[tuple[str, float]] = []  # (virsh verb, seconds)

    def __enter__(self) -> "Libvirtd":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        (self.dir / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.sock}"\nunix_sock_ro_perms = "0700"\nunix_sock_rw_perms = "0700"\n'
            f'auth_unix_ro = "none"\nauth_unix_rw = "none"\nlog_outputs = "3:file:{self.log}"\n')
        (self.dir / "qemu.conf").write_text(_QEMU_CONF)
        if self.hook is not None:
            (self.dir / "hook").write_text(self.hook)
        (self.dir / "inner.sh").write_text(_INNER.format(libvirtd=LIBVIRTD))
        self.out = open(self.dir / "daemon.out", "wb")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh",
                                      str(self.dir / "inner.sh"), str(self.dir)],
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {self.proc.returncode}: {self.output()}")
            if (self.sock / "libvirt-sock").exists() and self.virsh("uri").returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"libvirtd did not answer in {self.start_timeout} s: {self.output()}")

    def output(self) -> str:
        text = (self.dir / "daemon.out").read_text(errors="replace")
        if self.log.exists():
            text += self.log.read_text(errors="replace")[-3000:]
        return text

    def virsh(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        r = subprocess.run(["virsh", "-c", self.uri, *args], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
        self.timings.append((args[0], round(time.monotonic() - t0, 2)))
        return r

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for line in self.virsh("list", "--name").stdout.split():
                self.virsh("destroy", line)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()
        self.proc = None
