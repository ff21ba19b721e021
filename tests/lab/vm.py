"""Boot one lab guest, run one shell script in it, and hand back its exit status, output and files.

The guest is the Debian kernel from build.py under ``qemu-system-x86_64`` (TCG; a KVM guest hangs on these
machines) on a q35 machine with a virtual Intel IOMMU (interrupt remapping on) and a fixed set of real devices
(:func:`device_args`). Its root file system is the host's ``/``, read-only over 9p, under a tmpfs overlay: the
repository and the venv are visible at the same paths, and every write stays in the guest.

How results come back: each run gets a directory on the host whose ``out/`` subdirectory is a second, writable 9p
share (mount tag ``out``), mounted in the guest at ``/lab-out`` (also ``$LAB_OUT``). The script runs with
``/lab-out`` as its working directory, so ``passthru devices --json > devices.json`` lands in
``<run>/out/devices.json`` on the host: :meth:`Result.file` / :meth:`Result.json` read it. The script's own
stdout+stderr is tee'd to ``/lab-out/.lab/output.txt`` (clean: no kernel messages; :attr:`Result.output`) and to
the serial console (:attr:`Result.console`, with the boot log, for debugging). The exit status travels in the end
marker that the guest's /init prints on the console, ``PASSTHRU-LAB-END <nonce> rc=<N>``.

Failures of the lab itself (QEMU does not start, the guest cannot mount its root, the timeout expires, the guest
dies before the end marker) raise :class:`LabError` with the console tail; they never look like a command's status.

A guest whose kernel stalls before /init starts the script (no ``running`` line within ``START_TIMEOUT``) is killed
and booted once more (``BOOT_ATTEMPTS``): nothing of the script ran, so a second boot repeats nothing. The stalled
console is kept as ``console-stall-<N>.log`` and :attr:`Result.stalls` says so. A stall after the script started is
never retried: that is the timeout, and the test's failure.

Command line::

    python -m tests.lab.vm -- 'lspci -nnk'          # one command, prints its output, exits with its status
    python -m tests.lab.vm --script checks.sh       # a script file
    python -m tests.lab.vm --shell                  # interactive root shell in the guest (Ctrl-a x quits QEMU)
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import LabBuildError, LabImage, cache_dir, ensure_built

__all__ = ["Lab", "LabError", "Result", "device_args", "find_venv", "QEMU", "DEFAULT_TIMEOUT", "GUEST_OUT",
           "START_TIMEOUT"]

QEMU = "qemu-system-x86_64"
DEFAULT_TIMEOUT = 300.0
# seconds from QEMU's start until /init says it runs the script (a boot takes 15-45 s here, up to ~90 s with two
# guests and the unit tests on 2 cores); a guest that has not got there by then stalled in its kernel's early boot
# (once in CI: a vCPU idle in HLT whose timer interrupt never came, RCU stall warnings, nothing else for 20 min)
START_TIMEOUT = 240.0
BOOT_ATTEMPTS = 2
GUEST_OUT = "/lab-out"
VENV_ENV = "PASSTHRU_LAB_VENV"
REPO = Path(__file__).resolve().parents[2]
DISK_SIZE = 64 * 1024 * 1024
# host environment variables never passed to the guest: PASSTHRU_ROOT would point passthru away from the guest's
# real /sys
ENV_BLOCKLIST = frozenset({"PASSTHRU_ROOT"})
KEEP_RUNS = 10


class LabError(RuntimeError):
    """The lab failed (not the command in it): QEMU error, boot failure, timeout. The message has the console tail.

    ``run_dir`` (when the guest got that far) still holds what the guest wrote before it failed.
    """

    def __init__(self, message: str, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


def _opt(value: Path | str) -> str:
    """A value inside a QEMU -option list: commas are doubled."""
    return str(value).replace(",", ",,")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Result:
    """One guest session: exit status of the script, its clean output, the console, and the shared out dir."""

    rc: int
    output: str
    console: str
    out_dir: Path
    duration: float
    qemu_stderr: str = ""
    stalls: list[str] = field(default_factory=list)  # one line per boot killed before the script started
    started_after: float | None = None  # seconds from QEMU's start to /init's "running" line (the boot itself)

    def path(self, name: str) -> Path:
        return self.out_dir / name

    def file(self, name: str) -> str:
        p = self.path(name)
        if not p.exists():
            raise AssertionError(f"the guest wrote no {name} in {self.out_dir}; output:\n{_tail(self.output)}")
        return p.read_text(errors="replace")

    def json(self, name: str) -> Any:
        import json

        text = self.file(name)
        try:
            return json.loads(text)
        except ValueError as e:
            raise AssertionError(f"{name} from the guest is not JSON ({e}):\n{text[:2000]}") from None

    def check(self) -> "Result":
        """Assert the script exited 0; the assertion message carries its output."""
        assert self.rc == 0, f"guest script exited {self.rc}; output:\n{_tail(self.output, 80)}"
        return self


def device_args(disk: Path) -> list[str]:
    """The lab's devices, each behind its own PCIe root port (own IOMMU group) unless noted."""

    def root_port(name: str, slot: int) -> list[str]:
        return ["-device", f"pcie-root-port,id={name},bus=pcie.0,addr={slot:#x},chassis={slot},slot={slot}"]

    return [
        # the boot VGA (00:02.0, boot_vga=1): the GPU passthru must protect
        "-device", "VGA,bus=pcie.0,addr=0x2",
        # a GPU with its HDMI audio: class 0380 + 0403 in one slot, one IOMMU group
        *root_port("rp_gpu", 3),
        "-device", "secondary-vga,bus=rp_gpu,addr=0.0,multifunction=on",
        "-device", "ich9-intel-hda,bus=rp_gpu,addr=0.1",
        # two plain NICs (driver e1000e)
        *root_port("rp_nic1", 4),
        "-device", "e1000e,bus=rp_nic1,mac=52:54:00:00:00:01",
        *root_port("rp_nic2", 5),
        "-device", "e1000e,bus=rp_nic2,mac=52:54:00:00:00:02",
        # an SR-IOV capable NVMe controller: `echo 2 > sriov_numvfs` makes two VFs (.1, .2), each its own group
        *root_port("rp_nvme", 6),
        "-device", "nvme-subsys,id=subsys0,nqn=passthru-lab",
        "-device", "nvme,bus=rp_nvme,subsys=subsys0,serial=lab-sriov,sriov_max_vfs=2,sriov_vq_flexible=4,"
                   "sriov_vi_flexible=2,max_ioqpairs=8,msix_qsize=8",
        # an NVMe with a disk (64 MiB raw image): mkfs + mount in the guest = a device the host uses
        *root_port("rp_disk", 7),
        "-drive", f"file={_opt(disk)},if=none,id=disk0,format=raw",
        "-device", "nvme,bus=rp_disk,serial=lab-disk,drive=disk0",
        # USB: xHCI with a hub (port 1) carrying a keyboard (1.1), and a tablet on port 2
        *root_port("rp_usb", 8),
        "-device", "qemu-xhci,id=xhci,bus=rp_usb",
        "-device", "usb-hub,bus=xhci.0,port=1",
        "-device", "usb-kbd,bus=xhci.0,port=1.1",
        "-device", "usb-tablet,bus=xhci.0,port=2",
        # a PCI serial port (ttyS1); ttyS0 is the ISA console port from -serial
        *root_port("rp_serial", 9),
        "-chardev", "null,id=ser_pci",
        "-device", "pci-serial,bus=rp_serial,chardev=ser_pci",
        # a PCIe-to-PCI bridge with two conventional PCI devices behind it: they share the bridge's requester ID,
        # so the bridge and both make one IOMMU group (not isolated, and passthru must say why)
        *root_port("rp_legacy", 0xA),
        "-device", "pcie-pci-bridge,id=pcibr,bus=rp_legacy,addr=0.0",
        "-device", "pci-testdev,bus=pcibr,addr=1.0",
        "-device", "pci-testdev,bus=pcibr,addr=2.0",
        # a PCIe switch (TI X3130 upstream + two downstream ports) with a device on each downstream port
        *root_port("rp_switch", 0xB),
        "-device", "x3130-upstream,id=sw_up,bus=rp_switch,addr=0.0",
        "-device", "xio3130-downstream,id=sw_down1,bus=sw_up,addr=0.0,chassis=21,slot=1",
        "-device", "xio3130-downstream,id=sw_down2,bus=sw_up,addr=1.0,chassis=22,slot=2",
        "-device", "pci-testdev,bus=sw_down1,addr=0.0",
        "-device", "pci-testdev,bus=sw_down2,addr=0.0",
    ]


def find_venv() -> Path:
    """The venv whose ``passthru`` the guest runs: $PASSTHRU_LAB_VENV, else <repo>/.venv, else this interpreter's."""
    env = os.environ.get(VENV_ENV)
    if env:
        return Path(env)
    repo_venv = REPO / ".venv"
    if (repo_venv / "bin" / "python").exists():
        return repo_venv
    return Path(sys.prefix)


def _under_fresh_tmpfs(p: Path) -> bool:
    s = str(p)
    return any(s.startswith(prefix) for prefix in ("/tmp/", "/run/"))


class Lab:
    """A built lab image plus the venv to use; :meth:`run` boots one guest session."""

    def __init__(self, image: LabImage, venv: Path | None = None, *, qemu: str = QEMU) -> None:
        self.image = image
        self.venv = Path(os.path.abspath(venv or find_venv()))
        self.qemu = qemu

    @classmethod
    def create(cls, venv: Path | None = None) -> "Lab":
        """Build (or reuse) the image; raises LabError when QEMU is missing or the build fails."""
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise LabError(f"{QEMU} not found; apt-get install qemu-system-x86")
        try:
            image = ensure_built()
        except LabBuildError as e:
            raise LabError(f"lab build failed: {e}") from e
        lab = cls(image, venv, qemu=qemu)
        lab.compile_python()
        return lab

    def compile_python(self) -> None:
        """Byte-compile the venv's passthru on the host (a second here) so that no guest compiles it under TCG, in
        every boot, into its throw-away overlay: a fresh checkout has no __pycache__ until something imports it."""
        code = "import compileall, os, passthru; compileall.compile_dir(os.path.dirname(passthru.__file__), quiet=1)"
        try:
            subprocess.run([str(self.venv / "bin" / "python"), "-c", code], check=True, timeout=300,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (OSError, subprocess.SubprocessError) as e:
            raise LabError(f"cannot byte-compile passthru in {self.venv}: {e}") from e

    # ------------------------------------------------------------------------------------------- guest files

    def guest_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What the guest script's environment gets on top of HOME/TERM: PATH with the venv, PASSTHRU_* vars."""
        env = {
            "PATH": f"{self.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "VIRTUAL_ENV": str(self.venv),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "LAB_OUT": GUEST_OUT,
            "PASSTHRU_LAB": "1",
            "PASSTHRU_LAB_VENV": str(self.venv),
            "PASSTHRU_LAB_REPO": str(REPO),
        }
        for k, v in os.environ.items():
            if k.startswith("PASSTHRU_") and k not in ENV_BLOCKLIST and k not in env:
                env[k] = v
        env.update(extra or {})
        return env

    def _keep_paths(self) -> list[str]:
        cands = [self.venv, REPO, Path(os.path.realpath(self.venv / "bin" / "python")).parent.parent,
                 self.image.moddir.parent.parent.parent.parent]  # kernel-<version>/ of a cache under /tmp
        keep: list[str] = []
        for c in cands:
            s = str(c)
            if _under_fresh_tmpfs(c) and s not in keep:
                if any(ch in s for ch in " ,\t\n\"'"):
                    raise LabError(f"{s} must be visible in the guest, but its path has spaces or commas")
                keep.append(s)
        return keep

    def _write_wrapper(self, lab_dir: Path, env: dict[str, str], body: str) -> None:
        lines = ["#!/bin/sh", "# generated by tests/lab/vm.py: the environment, then the script"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
        lines += [f"cd {GUEST_OUT}", body]
        (lab_dir / "run.sh").write_text("\n".join(lines) + "\n")
        (lab_dir / "run.sh").chmod(0o755)

    def kernel_cmdline(self, nonce: str, cmd: str, extra: tuple[str, ...] = ()) -> str:
        for v in (str(self.image.moddir), cmd):
            if any(ch.isspace() for ch in v):
                raise LabError(f"{v!r}: paths on the kernel command line cannot contain spaces")
        parts = ["console=ttyS0", "intel_iommu=on", "iommu=pt", "panic=-1", "oops=panic", "no_timer_check",
                 f"passthru.cmd={cmd}", f"passthru.nonce={nonce}", f"passthru.moddir={self.image.moddir}",
                 "passthru.out=1", *extra]
        keep = self._keep_paths()
        if keep:
            parts.append("passthru.keep=" + ",".join(keep))
        return " ".join(parts)

    def qemu_argv(self, run_dir: Path, nonce: str, *, interactive: bool = False,
                  kernel_args: tuple[str, ...] = ()) -> list[str]:
        out = run_dir / "out"
        disk = run_dir / "disk.img"
        return [
            self.qemu, "-accel", "tcg,thread=multi", "-M", "q35,kernel-irqchip=split",
            "-device", "intel-iommu,intremap=on,caching-mode=on",
            "-m", "2048", "-smp", "2", "-nodefaults", "-nographic", "-no-reboot",
            "-serial", "mon:stdio" if interactive else "stdio",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initramfs),
            "-append", self.kernel_cmdline(nonce, f"{GUEST_OUT}/.lab/run.sh", kernel_args),
            *device_args(disk),
            # the two 9p shares (what -virtfs would make, at fixed addresses so the devices above keep theirs)
            "-fsdev", "local,id=fs_root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=fs_root,mount_tag=hostroot,bus=pcie.0,addr=0x10",
            "-fsdev", f"local,id=fs_out,path={_opt(out)},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=fs_out,mount_tag=out,bus=pcie.0,addr=0x11",
        ]

    def _prepare_run_dir(self, run_dir: Path | None) -> Path:
        if run_dir is None:
            runs = self.image.cache / "runs"
            runs.mkdir(parents=True, exist_ok=True)
            old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
            for p in old[:max(0, len(old) - KEEP_RUNS + 1)]:
                shutil.rmtree(p, ignore_errors=True)
            run_dir = runs / (time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "out" / ".lab").mkdir(parents=True, exist_ok=True)
        disk = run_dir / "disk.img"
        with open(disk, "wb") as f:  # fresh, sparse: what one guest wrote never leaks into the next
            f.truncate(DISK_SIZE)
        return run_dir

    # ------------------------------------------------------------------------------------------- running

    def run(self, script: str, *, timeout: float = DEFAULT_TIMEOUT, env: dict[str, str] | None = None,
            run_dir: Path | None = None, echo: bool | None = None, kernel_args: tuple[str, ...] = (),
            start_timeout: float = START_TIMEOUT, attempts: int = BOOT_ATTEMPTS) -> Result:
        """Boot, run ``script`` with bash in the guest (cwd /lab-out), power off; return its status and output.

        ``echo`` streams the console to stderr while it runs (default: $PASSTHRU_LAB_ECHO=1). ``kernel_args`` are
        added to the kernel command line (e.g. ``passthru.coldplug=0``, ``passthru.loglevel=7``; see init.sh).
        A boot that has not started the script after ``start_timeout`` seconds is killed and booted again, up to
        ``attempts`` boots in all; ``timeout`` counts from the start of the boot that runs the script.
        """
        run_dir = self._prepare_run_dir(run_dir)
        out = run_dir / "out"
        lab = out / ".lab"
        (lab / "script.sh").write_text(script if script.endswith("\n") else script + "\n")
        body = (f'{{ /bin/bash {GUEST_OUT}/.lab/script.sh </dev/null; echo $? > {GUEST_OUT}/.lab/rc; }} 2>&1 '
                f'| tee {GUEST_OUT}/.lab/output.txt\n'
                f'exit "$(cat {GUEST_OUT}/.lab/rc 2>/dev/null || echo 254)"')
        self._write_wrapper(lab, self.guest_env(env), body)
        if echo is None:
            echo = os.environ.get("PASSTHRU_LAB_ECHO") == "1"
        stalls: list[str] = []
        while True:
            nonce = secrets.token_hex(8)
            argv = self.qemu_argv(run_dir, nonce, kernel_args=kernel_args)
            (lab / "qemu.argv").write_text("\n".join(argv) + "\n")
            started = f"] running {GUEST_OUT}/.lab/run.sh".encode()
            console, stderr, duration, ended, started_after = _run_qemu(argv, timeout, run_dir / "console.log", echo,
                                                         started=started, start_timeout=start_timeout)
            if ended != "stalled":
                break
            kept = run_dir / f"console-stall-{len(stalls) + 1}.log"
            os.replace(run_dir / "console.log", kept)
            stalls.append(f"boot {len(stalls) + 1} had not started the script after {start_timeout:.0f}s "
                          f"(console in {kept})")
            if len(stalls) >= attempts:
                raise LabError(f"the guest stalled before running the script in {len(stalls)} boots "
                               f"(run dir {run_dir})\n--- console tail:\n{_tail(console)}\n"
                               f"--- qemu stderr:\n{_tail(stderr, 20)}", run_dir)
            self._prepare_run_dir(run_dir)  # a fresh disk; the script and its wrapper stay
        fail = re.search(rf"PASSTHRU-LAB-FAIL {nonce} (.*)", console)
        if fail:
            raise LabError(f"the lab could not start: {fail.group(1)}\n--- console tail:\n{_tail(console)}", run_dir)
        end = re.search(rf"PASSTHRU-LAB-END {nonce} rc=(\d+)", console)
        rc = int(end.group(1)) if end else None
        if rc is None:
            why = {"timeout": f"timed out after {timeout:.0f}s",
                   "late": f"started the script only as it was killed, {start_timeout:.0f}s after its start"
                   }.get(ended, "ended without the end marker")
            raise LabError(f"the guest {why} (run dir {run_dir})\n--- console tail:\n{_tail(console)}\n"
                           f"--- qemu stderr:\n{_tail(stderr, 20)}", run_dir)
        output_file = lab / "output.txt"
        output = output_file.read_text(errors="replace") if output_file.exists() else ""
        return Result(rc=rc, output=output, console=console, out_dir=out, duration=duration, qemu_stderr=stderr,
                      stalls=stalls, started_after=started_after)

    def shell(self, *, env: dict[str, str] | None = None) -> int:
        """Interactive root shell in a fresh guest, on this terminal. Ctrl-a x quits QEMU; `exit` powers off."""
        run_dir = self._prepare_run_dir(None)
        lab = run_dir / "out" / ".lab"
        self._write_wrapper(lab, self.guest_env(env), "exec /bin/bash -i")
        argv = self.qemu_argv(run_dir, secrets.token_hex(8), interactive=True)
        print(f"passthru-lab: booting (run dir {run_dir}; /lab-out is {run_dir / 'out'}; Ctrl-a x quits)",
              file=sys.stderr)
        return subprocess.run(argv, check=False).returncode


def _run_qemu(argv: list[str], timeout: float, log_path: Path, echo: bool, *, started: bytes = b"",
              start_timeout: float = 0.0) -> tuple[str, str, float, str, float | None]:
    """Run QEMU until it exits; return console, stderr, seconds, how it ended, and after how many seconds the
    ``started`` bytes came (None: never). How it ended: ``"exited"``, ``"timeout"``
    (killed after ``timeout`` s), ``"stalled"`` (killed: no ``started`` bytes on the console within
    ``start_timeout`` s, when that is shorter than ``timeout``), or ``"late"`` (killed so, but the bytes came in
    before it died)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        raise LabError(f"cannot start {argv[0]}: {e}") from e
    chunks: list[bytes] = []
    errs: list[bytes] = []
    seen_at: list[float] = []  # when the started bytes came
    wake = threading.Event()  # set by the started bytes or by the end of the console (QEMU gone)

    def pump_out() -> None:
        assert proc.stdout is not None
        tail = b""
        with open(log_path, "wb") as log:
            while True:
                b = proc.stdout.read1(65536)
                if not b:
                    wake.set()
                    break
                chunks.append(b)
                log.write(b)
                log.flush()
                if started and not seen_at:
                    tail = tail[-len(started):] + b  # the marker may straddle two reads
                    if started in tail:
                        seen_at.append(time.monotonic() - t0)
                        wake.set()
                if echo:
                    sys.stderr.buffer.write(b)
                    sys.stderr.buffer.flush()

    def pump_err() -> None:
        assert proc.stderr is not None
        for b in iter(lambda: proc.stderr.read1(65536), b""):
            errs.append(b)

    threads = [threading.Thread(target=pump_out, daemon=True), threading.Thread(target=pump_err, daemon=True)]
    for t in threads:
        t.start()
    ended = "exited"
    watch_start = bool(started) and 0.0 < start_timeout < timeout
    try:
        if watch_start and not wake.wait(start_timeout) and proc.poll() is None:
            ended = "stalled"
            proc.kill()
        proc.wait(timeout=max(0.0, timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        ended = "timeout"
        proc.kill()
        proc.wait(timeout=30)
    except BaseException:  # Ctrl-C in pytest: never leave a QEMU behind
        proc.kill()
        proc.wait(timeout=30)
        raise
    for t in threads:
        t.join(timeout=10)
    if ended == "stalled" and seen_at:
        ended = "late"  # the script may have begun as QEMU was killed: never boot it again
    console = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return (console, b"".join(errs).decode(errors="replace"), time.monotonic() - t0, ended,
            seen_at[0] if seen_at else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.vm", description="Run commands in the passthru lab guest.",
                                 epilog="Example: python -m tests.lab.vm -- 'lspci -nnk; passthru devices'")
    ap.add_argument("--shell", action="store_true", help="interactive root shell in the guest")
    ap.add_argument("--script", metavar="FILE", help="run this shell script in the guest")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds before QEMU is killed")
    ap.add_argument("--console", action="store_true", help="print the whole console (boot log) instead of the output")
    ap.add_argument("--venv", help=f"venv whose passthru the guest uses (default ${VENV_ENV}, <repo>/.venv, "
                                   "or this interpreter's)")
    ap.add_argument("command", nargs="*", help="shell command to run (after --)")
    args = ap.parse_args(argv)
    try:
        lab = Lab.create(Path(args.venv) if args.venv else None)
        if args.shell:
            return lab.shell()
        if args.script:
            script = Path(args.script).read_text()
        elif args.command:
            script = " ".join(args.command)
        else:
            ap.error("give a command (after --), --script FILE or --shell")
        r = lab.run(script, timeout=args.timeout, echo=False)
    except LabError as e:
        print(f"passthru-lab: {e}", file=sys.stderr)
        return 125
    sys.stdout.write(r.console if args.console else r.output)
    print(f"passthru-lab: exit {r.rc} in {r.duration:.1f}s; files in {r.out_dir}", file=sys.stderr)
    return r.rc


if __name__ == "__main__":
    sys.exit(main())
