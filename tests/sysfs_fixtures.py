"""Named fake hosts built with SysfsBuilder.

Each ``make_<name>(root)`` builds the tree and returns the builder (its ``functions``, ``groups``, ``mdevs`` and
``usb`` say what the fixture meant, for tests to compare with); ``<name>(root)`` returns just the root path.

- gpu_server: 2-socket Intel (Xeon SP / C620) host, VT-d on (dmar0, dmar1), iommu=pt; four GTX 1080 Ti with
  audio, a Tesla T4 with mdev types and one live vGPU that mdevctl defines (/etc/mdevctl.d), an A100 with SR-IOV
  vGPU VFs (no type set), a dual-port ConnectX-5 with 8 VFs per port,
  two NVMe, xHCI with a hub, keyboard, FTDI serial adapter and a stick, PNP/platform/PCI serial ports, ASPEED BMC
  VGA (boot VGA) behind an AST1150 bridge.
- broken_desktop: Ryzen APU desktop, AMD-Vi on (ivhd0), iommu=pt but no vfio arguments; the GTX 1080 Ti sits
  behind a chipset switch without ACS, so GPU, audio, USB and SATA controllers share one group with the switch.
- bare_host: QEMU q35 guest without an IOMMU: virtio-net, bochs VGA, ttyS0 console and ghost ports, no USB.
- big_tree: n functions over several domains for benchmarks.
- busy_host: a virtualization host whose devices the host itself uses (kernel 6.8, serial-base tty layout): root
  LVM on MD RAID1 over partitions of two SATA SSDs on two AHCI controllers, swap LV, EFI partition, a mounted
  NVMe, a whole-disk PV whose LV is not mounted, an idle NVMe; eno1+eno2 in bond0 under br0 with the host's
  addresses and default route, a storage NIC with an address, a NIC with only link-local IPv6, an E810 with VFs on
  iavf (with an address) and vfio-pci; serial console ttyS4 on a PCI card, VT console on the boot VGA (ASPEED), a
  GPU on vfio-pci.
"""

from __future__ import annotations

from pathlib import Path

from sysfs_builder import KERNEL_RELEASE, SysfsBuilder

__all__ = ["make_gpu_server", "make_broken_desktop", "make_bare_host", "make_big_tree", "make_busy_host",
           "gpu_server", "broken_desktop", "bare_host", "big_tree", "busy_host", "T4_MDEV_UUID"]

T4_MDEV_UUID = "4b6a7c3e-1f2d-4e5a-9b8c-0d1e2f3a4b5c"
_GIB, _MIB = 1 << 30, 1 << 20


def _gtx1080ti(b: SysfsBuilder, port: str, bus: int, driver: str | None, audio_driver: str | None, *,
               numa: int, bar1: int = 256 * _MIB, override: str | None = None) -> None:
    """GP102 [GeForce GTX 1080 Ti] and its HDMI audio function, one multifunction slot behind ``port``."""
    common = dict(parent=port, numa_node=numa, revision=0xA1, subsystem=(0x10DE, 0x120F), multifunction=True,
                  reset_methods=("bus",), driver_override=override)
    b.pci(f"0000:{bus:02x}:00.0", 0x10DE, 0x1B06, 0x030000, driver=driver, boot_vga=False, rom=512 * 1024,
          bars=[("mem", 16 * _MIB), ("mem64pf", bar1), ("mem64pf", 32 * _MIB), ("io", 128)], **common)
    b.pci(f"0000:{bus:02x}:00.1", 0x10DE, 0x10EF, 0x040300, driver=audio_driver, bars=[("mem", 16 * 1024)], **common)


def _bmc_vga_and_serial_card(b: SysfsBuilder, bmc_subsystem: tuple[int, int]) -> None:
    """A Supermicro board's ASPEED BMC display (the boot VGA, behind its PCIe-to-PCI bridge) and an OXPCIe952
    serial card on the chipset's root ports."""
    b.bridge("0000:00:1c.0", device=0xA190, numa_node=0, revision=0xF9, link=("5.0 GT/s PCIe", 1))
    b.bridge("0000:01:00.0", parent="0000:00:1c.0", kind="pcie_to_pci", vendor=0x1A03, device=0x1150,
             numa_node=0, link=("5.0 GT/s PCIe", 1), revision=0x04)
    b.pci("0000:02:00.0", 0x1A03, 0x2000, 0x030000, parent="0000:01:00.0", driver="ast", boot_vga=True,
          numa_node=0, link=None, revision=0x41, subsystem=bmc_subsystem, reset_methods=(),
          bars=[("mem", 16 * _MIB), ("mem", 128 * 1024), ("io", 128)])
    b.bridge("0000:00:1c.4", device=0xA194, numa_node=0, revision=0xF9, link=("2.5 GT/s PCIe", 1))
    b.pci("0000:03:00.0", 0x1415, 0xC158, 0x070002, parent="0000:00:1c.4", driver="serial", numa_node=0,
          link=("2.5 GT/s PCIe", 1), subsystem=(0x1415, 0xC158), reset_methods=("pm",),
          bars=[("mem", 16 * 1024), ("mem", 2 * _MIB)])


def make_gpu_server(root: str | Path) -> SysfsBuilder:
    b = SysfsBuilder(root, nodes=2, cpus_per_node=16, auto_groups=True)
    b.iommu("intel", units=2, group_type="identity")
    b.proc(f"BOOT_IMAGE=/vmlinuz-{KERNEL_RELEASE} root=UUID=5d4c1c9e-8a63-4a43-b1f4-7f0e2b9b8f11 ro "
           "intel_iommu=on iommu=pt console=tty0 console=ttyS0,115200n8",
           mounts=[("/dev/nvme0n1p2", "/", "ext4", "rw,relatime,errors=remount-ro"),
                   ("/dev/nvme0n1p1", "/boot/efi", "vfat", "rw,relatime,fmask=0077,dmask=0077")])
    chip = dict(numa_node=0, link=None, reset_methods=(), subsystem=(0x15D9, 0x095D), revision=0x09)
    # socket 0, root bus 00: C620 chipset
    b.pci("0000:00:00.0", 0x8086, 0x2020, 0x060000, **{**chip, "revision": 0x04})
    b.pci("0000:00:14.0", 0x8086, 0xA1AF, 0x0C0330, driver="xhci_hcd", bars=[("mem64", 64 * 1024)], **chip)
    b.pci("0000:00:17.0", 0x8086, 0xA182, 0x010601, driver="ahci", bars=[("mem", 8192), ("mem", 256), ("io", 8),
                                                                          ("io", 4), ("io", 32), ("mem", 2048)], **chip)
    _bmc_vga_and_serial_card(b, bmc_subsystem=(0x15D9, 0x095D))
    b.pci("0000:00:1f.0", 0x8086, 0xA1C1, 0x060100, **chip)
    b.pci("0000:00:1f.2", 0x8086, 0xA1A1, 0x058000, bars=[("mem", 16 * 1024)], **chip)
    b.pci("0000:00:1f.4", 0x8086, 0xA1A3, 0x0C0500, driver="i801_smbus", bars=[("mem64", 256), ("io", 32)], **chip)
    b.pci("0000:00:1f.5", 0x8086, 0xA1A4, 0x0C8000, bars=[("mem", 4096)], **chip)
    # socket 0 PCIe stacks: GPUs on 17, NIC on 3a, NVMe on 5d
    b.bridge("0000:17:00.0", device=0x2030, numa_node=0)
    _gtx1080ti(b, "0000:17:00.0", 0x18, "nvidia", "snd_hda_intel", numa=0)
    b.bridge("0000:17:02.0", device=0x2032, numa_node=0)
    _gtx1080ti(b, "0000:17:02.0", 0x19, "vfio-pci", "vfio-pci", numa=0, bar1=16 * _GIB, override="vfio-pci")
    b.bridge("0000:3a:00.0", device=0x2030, numa_node=0)
    for fn in (0, 1):
        pf = f"0000:3b:00.{fn}"
        b.pci(pf, 0x15B3, 0x1017, 0x020000, parent="0000:3a:00.0", driver="mlx5_core", numa_node=0, acs=True,
              subsystem=(0x15B3, 0x0007), multifunction=True, bars=[("mem64pf", 32 * _MIB)], rom=1 * _MIB)
        b.netdev(pf, f"enp59s0f{fn}np{fn}", f"b8:59:9f:a1:2c:{fn:02x}", phys_port_name=f"p{fn}",
                 phys_switch_id="98039b0300a1b2c3")
        drivers = ["mlx5_core"] * 4 + ["vfio-pci"] * 4 if fn == 0 else ["mlx5_core"] * 2 + [None] + ["vfio-pci"] * 5
        b.sriov(pf, 8, 8, 0x1018, offset=2 if fn == 0 else 9, stride=1, vf_drivers=drivers,
                vf_bars=[("mem64pf", 1 * _MIB)])
        for n, drv in enumerate(drivers):
            if drv == "mlx5_core":
                rid = 0x3B00 + fn + (2 if fn == 0 else 9) + n
                vf = f"0000:3b:{(rid & 0xFF) >> 3:02x}.{rid & 7}"
                b.netdev(vf, f"enp59s0f{fn}v{n}", f"02:6b:{fn:02x}:00:00:{n:02x}", phys_port_name=None)
    b.bridge("0000:5d:00.0", device=0x2030, numa_node=0)
    b.bridge("0000:5d:02.0", device=0x2032, numa_node=0)
    for bus, port, idx, serial in ((0x5E, "0000:5d:00.0", 0, "S4EWNX0N401234A"), (0x5F, "0000:5d:02.0", 1,
                                                                                    "S4EWNX0N405678B")):
        nv = f"0000:{bus:02x}:00.0"
        b.pci(nv, 0x144D, 0xA808, 0x010802, parent=port, driver="nvme", numa_node=0, subsystem=(0x144D, 0xA801),
              link=("8.0 GT/s PCIe", 4), bars=[("mem64", 16 * 1024)])
        b.nvme(nv, idx, serial=serial, partitions=(512, 952_000) if idx == 0 else ())
    # socket 1: two more GPUs on nouveau, an empty hot-plug slot, the T4 (mdev) and the A100 (SR-IOV vGPU)
    b.bridge("0000:85:00.0", device=0x2030, numa_node=1)
    _gtx1080ti(b, "0000:85:00.0", 0x86, "nouveau", "snd_hda_intel", numa=1)
    b.bridge("0000:85:02.0", device=0x2032, numa_node=1)
    _gtx1080ti(b, "0000:85:02.0", 0x87, "nouveau", "snd_hda_intel", numa=1)
    b.bridge("0000:85:03.0", device=0x2033, numa_node=1, secondary=0x88, link=("2.5 GT/s PCIe", 0, "8.0 GT/s PCIe", 8))
    b.bridge("0000:ae:00.0", device=0x2030, numa_node=1)
    b.pci("0000:af:00.0", 0x10DE, 0x1EB8, 0x030200, parent="0000:ae:00.0", driver="nvidia", numa_node=1,
          revision=0xA1, subsystem=(0x10DE, 0x12A2), reset_methods=("bus",),
          bars=[("mem", 16 * _MIB), ("mem64pf", 256 * _MIB), ("mem64pf", 32 * _MIB)])
    b.mdev_types("0000:af:00.0", [
        dict(id=f"nvidia-{222 + i}", name=f"GRID {name}", available_instances=16 // fb,
             description=f"num_heads=4, frl_config=60, framebuffer={fb * 1024}M, max_resolution=5120x2880, "
                         f"max_instance={16 // fb}")
        for i, (name, fb) in enumerate((("T4-1B", 1), ("T4-2B", 2), ("T4-1Q", 1), ("T4-2Q", 2)))])
    b.mdev("0000:af:00.0", T4_MDEV_UUID, "nvidia-224")
    b.mdevctl("0000:af:00.0", T4_MDEV_UUID, "nvidia-224")  # made by hand with mdevctl (start + define --auto)
    b.bridge("0000:d7:00.0", device=0x2030, numa_node=1, link=("16.0 GT/s PCIe", 16))
    b.pci("0000:d8:00.0", 0x10DE, 0x20B5, 0x030200, parent="0000:d7:00.0", driver="nvidia", numa_node=1,
          revision=0xA1, subsystem=(0x10DE, 0x1533), link=("16.0 GT/s PCIe", 16),
          bars=[("mem", 16 * _MIB), ("mem64pf", 128 * _GIB), ("mem64pf", 32 * _MIB)])
    for vf in b.sriov("0000:d8:00.0", 20, 2, 0x20B5, offset=4, vf_driver="nvidia",
                      vf_bars=[("mem", 16 * _MIB), ("mem64pf", 4 * _GIB)]):
        b.nvidia_vgpu(vf.rsplit("/", 1)[1], ["558 : NVIDIA A100-4C", "559 : NVIDIA A100-5C",
                                             "560 : NVIDIA A100-8C", "561 : NVIDIA A100-10C"])
    # USB on the chipset xHCI
    b.usb_bus(1, "0000:00:14.0", speed="480", ports=16)
    b.usb_bus(2, "0000:00:14.0", speed="5000", ports=10)
    b.usb_device("1-1", 0x0424, 0x2514, speed="480", hub_ports=4, bcd_device=0x0B53, removable="fixed")
    b.usb_device("1-1.1", 0x046D, 0xC31C, manufacturer="Logitech", product="USB Keyboard", speed="1.5",
                 bcd_device=0x6400, version="1.10", interfaces=[(3, "usbhid", 1, 1), (3, "usbhid", 0, 0)])
    b.usb_device("1-1.3", 0x0403, 0x6001, manufacturer="FTDI", product="FT232R USB UART", serial="A50285BI",
                 bcd_device=0x0600, interfaces=[(0xFF, "ftdi_sio", 0xFF, 0xFF)])
    b.usb_device("1-2", 0x0781, 0x5581, manufacturer="SanDisk", product="Ultra", serial="4C530001230918108171",
                 speed="480", bcd_device=0x0100, version="2.10", interfaces=[(8, "usb-storage", 6, 0x50)])
    # serial ports: PNP ttyS0 is the console, ttyS1-3 legacy ghosts, ttyS4 on the PCI card, ttyUSB0 on the FTDI
    b.serial("ttyS0", backing="pnp", pnp_id="00:04")
    for n in (1, 2, 3):
        b.serial(f"ttyS{n}", ghost=True)
    b.serial("ttyS4", backing="pci", address="0000:03:00.0", irq=35)
    b.serial("ttyUSB0", backing="usb", address="1-1.3")
    b.console("tty0 ttyS0")
    b.build()
    return b


def make_broken_desktop(root: str | Path) -> SysfsBuilder:
    b = SysfsBuilder(root, nodes=1, cpus_per_node=12, auto_groups=True)
    b.iommu("amd", at="0000:00:00.2", group_type="identity")
    b.proc(f"BOOT_IMAGE=/boot/vmlinuz-{KERNEL_RELEASE} root=UUID=0b9e2f4c-2b1a-4d0e-8f43-52c0a1f7d9e3 ro quiet "
           "splash iommu=pt", cpu_vendor="AuthenticAMD",
           mounts=[("/dev/sda2", "/", "ext4", "rw,relatime")], swaps=[("/swapfile", 2097148)])
    chip = dict(link=None, reset_methods=(), subsystem=(0x1043, 0x8877))
    b.pci("0000:00:00.0", 0x1022, 0x1630, 0x060000, **chip)
    b.pci("0000:00:00.2", 0x1022, 0x1631, 0x080600, **chip)
    b.pci("0000:00:01.0", 0x1022, 0x1632, 0x060000, **chip)
    # chipset behind GPP bridge 00:01.2: a switch without ACS -> one group for everything below it. Its upstream
    # port is a multifunction device (header type 0x81) without ACS, so the kernel does not stop at it either
    b.bridge("0000:00:01.2", vendor=0x1022, device=0x1634, link=("16.0 GT/s PCIe", 4))
    b.bridge("0000:01:00.0", parent="0000:00:01.2", kind="upstream", vendor=0x1022, device=0x57AD, acs=False,
             link=("16.0 GT/s PCIe", 4), multifunction=True)
    for port, dev in (("0000:02:00.0", 0x57A3), ("0000:02:04.0", 0x57A4), ("0000:02:08.0", 0x57A4)):
        b.bridge(port, parent="0000:01:00.0", kind="downstream", vendor=0x1022, device=dev, acs=False,
                 link=("16.0 GT/s PCIe", 4))
    _gtx1080ti(b, "0000:02:00.0", 0x03, "nouveau", "snd_hda_intel", numa=-1)
    b.pci("0000:04:00.0", 0x1022, 0x149C, 0x0C0330, parent="0000:02:04.0", driver="xhci_hcd",
          link=("16.0 GT/s PCIe", 4), subsystem=(0x1043, 0x87C0), reset_methods=("flr", "pm"),
          bars=[("mem64", 1 * _MIB)])
    b.pci("0000:05:00.0", 0x1022, 0x7901, 0x010601, parent="0000:02:08.0", driver="ahci", revision=0x51,
          link=("16.0 GT/s PCIe", 4), subsystem=(0x1043, 0x87C0), reset_methods=("pm",), bars=[("mem", 2048)])
    # APU side: iGPU (boot VGA) with its functions behind internal GPP bridge 00:08.1
    b.pci("0000:00:08.0", 0x1022, 0x1632, 0x060000, **chip)
    b.bridge("0000:00:08.1", vendor=0x1022, device=0x1635, link=("8.0 GT/s PCIe", 16))
    apu = dict(parent="0000:00:08.1", subsystem=(0x1043, 0x8809), link=("8.0 GT/s PCIe", 16), reset_methods=("pm",))
    b.pci("0000:06:00.0", 0x1002, 0x1636, 0x030000, driver="amdgpu", boot_vga=True, revision=0xC9, rom=128 * 1024,
          bars=[("mem64pf", 256 * _MIB), ("mem64pf", 2 * _MIB), ("io", 256), ("mem", 512 * 1024)], **apu)
    b.pci("0000:06:00.1", 0x1002, 0x1637, 0x040300, driver="snd_hda_intel", bars=[("mem", 16 * 1024)], **apu)
    b.pci("0000:06:00.2", 0x1022, 0x15DF, 0x108000, driver="ccp", bars=[("mem", _MIB), ("mem", 8192)], **apu)
    b.pci("0000:06:00.3", 0x1022, 0x1639, 0x0C0330, driver="xhci_hcd", bars=[("mem64", _MIB)], **apu)
    b.pci("0000:06:00.4", 0x1022, 0x1639, 0x0C0330, driver="xhci_hcd", bars=[("mem64", _MIB)], **apu)
    b.pci("0000:00:14.0", 0x1022, 0x790B, 0x0C0500, driver="piix4_smbus", revision=0x51, **chip)
    b.pci("0000:00:14.3", 0x1022, 0x790E, 0x060100, revision=0x51, **chip)
    for fn in range(4):
        b.pci(f"0000:00:18.{fn}", 0x1022, 0x1448 + fn, 0x060000, link=None, reset_methods=())
    b.usb_bus(1, "0000:04:00.0", speed="480", ports=6)
    b.usb_bus(2, "0000:04:00.0", speed="10000", ports=4)
    b.usb_device("1-4", 0x0781, 0x5581, manufacturer="SanDisk", product="Ultra", serial="4C530001150321116283",
                 speed="480", interfaces=[(8, "usb-storage", 6, 0x50)])
    b.usb_bus(3, "0000:06:00.3", speed="480", ports=4)
    b.usb_bus(4, "0000:06:00.3", speed="10000", ports=2)
    b.usb_device("3-2", 0x046D, 0xC52B, manufacturer="Logitech", product="USB Receiver", speed="12",
                 bcd_device=0x2411, interfaces=[(3, "usbhid", 1, 1), (3, "usbhid", 1, 2), (3, "usbhid", 0, 0)])
    for n in range(4):
        b.serial(f"ttyS{n}", ghost=True)
    b.console("tty0")
    b.build()
    return b


def make_bare_host(root: str | Path) -> SysfsBuilder:
    b = SysfsBuilder(root, nodes=1, cpus_per_node=4)
    b.iommu(None)
    b.proc(f"BOOT_IMAGE=/boot/vmlinuz-{KERNEL_RELEASE} root=/dev/vda1 ro console=tty0 console=ttyS0,115200n8",
           model_name="Intel Xeon Processor (Icelake)", mounts=[("/dev/vda1", "/", "ext4")])
    q = dict(subsystem=(0x1AF4, 0x1100), link=None, reset_methods=())
    b.pci("0000:00:00.0", 0x8086, 0x29C0, 0x060000, **q)
    b.pci("0000:00:01.0", 0x1234, 0x1111, 0x030000, driver="bochs-drm", boot_vga=True, revision=0x02,
          bars=[("mempf", 16 * _MIB), None, ("mem", 4096)], rom=64 * 1024, **q)
    b.bridge("0000:00:02.0", vendor=0x1B36, device=0x000C, link=("2.5 GT/s PCIe", 1), multifunction=True)
    b.bridge("0000:00:02.1", vendor=0x1B36, device=0x000C, link=("2.5 GT/s PCIe", 1), secondary=2)
    b.pci("0000:01:00.0", 0x1AF4, 0x1041, 0x020000, parent="0000:00:02.0", driver="virtio-pci", revision=0x01,
          subsystem=(0x1AF4, 0x1100), link=("2.5 GT/s PCIe", 1), reset_methods=("flr",),
          bars=[None, ("mem", 4096), None, None, ("mem64pf", 16 * 1024)], rom=256 * 1024)
    b.netdev("0000:01:00.0", "enp1s0", "52:54:00:12:34:56")
    b.pci("0000:00:1f.0", 0x8086, 0x2918, 0x060100, driver="lpc_ich", revision=0x02, **q)
    b.pci("0000:00:1f.2", 0x8086, 0x2922, 0x010601, driver="ahci", revision=0x02,
          bars=[None, None, None, None, ("io", 32), ("mem", 4096)], **q)
    b.pci("0000:00:1f.3", 0x8086, 0x2930, 0x0C0500, driver="i801_smbus", revision=0x02, bars=[None] * 4 + [("io", 64)],
          **q)
    b.serial("ttyS0", backing="pnp", pnp_id="00:05")
    for n in (1, 2, 3):
        b.serial(f"ttyS{n}", ghost=True)
    b.console("tty0 ttyS0")
    b.build()
    return b


def make_big_tree(root: str | Path, n: int = 4096) -> SysfsBuilder:
    """``n`` functions: per domain a host bridge, then root ports with a GPU+audio, an NVMe, a 2-port NIC with
    7 VFs per port, or a switch with two NVMe behind it; leftovers are root-bus endpoints."""
    b = SysfsBuilder(root, nodes=2, cpus_per_node=16, auto_groups=True)
    b.iommu("intel", units=2)
    b.proc(f"BOOT_IMAGE=/vmlinuz-{KERNEL_RELEASE} root=/dev/nvme0n1p2 ro intel_iommu=on")
    sizes = {"gpu": 3, "nvme": 2, "nic": 17, "switch": 6}
    buses = {"gpu": 1, "nvme": 1, "nic": 1, "switch": 4}
    order = ["gpu", "nvme", "nic", "switch"]
    state = dict(dom=-1, bus=256, devfn=256)
    made = 0

    def new_domain() -> None:
        state.update(dom=state["dom"] + 1, bus=1, devfn=0x08)
        b.pci(f"{state['dom']:04x}:00:00.0", 0x8086, 0x2020, 0x060000, numa_node=state["dom"] % 2, link=None,
              reset_methods=())

    i = 0
    while made < n:
        kind = order[i % len(order)]
        i += 1
        if sizes[kind] > n - made:
            kind = "leaf"
        if state["devfn"] > 0xFF or state["bus"] + buses.get(kind, 0) > 0xFF:
            new_domain()  # its host bridge is one function too
            made += 1
            continue
        dom, numa, bus, devfn = state["dom"], state["dom"] % 2, state["bus"], state["devfn"]
        rp = f"{dom:04x}:00:{devfn >> 3:02x}.{devfn & 7}"
        state["devfn"] += 1
        if kind == "leaf":
            b.pci(rp, 0x8086, 0x2021, 0x088000, driver="ioatdma", numa_node=numa, link=None, bars=[("mem64", 16384)])
            made += 1
            continue
        b.bridge(rp, device=0x2030, numa_node=numa)
        state["bus"] += buses[kind]
        at = f"{dom:04x}:{bus:02x}:00"
        if kind == "gpu":
            pick = i % 3
            for fn, (dev, cls, drv) in enumerate(((0x1B06, 0x030000, ("vfio-pci", "nvidia", None)[pick]),
                                                  (0x10EF, 0x040300, ("vfio-pci", "snd_hda_intel", None)[pick]))):
                b.pci(f"{at}.{fn}", 0x10DE, dev, cls, parent=rp, driver=drv, numa_node=numa, multifunction=True,
                      revision=0xA1, reset_methods=("bus",),
                      bars=[("mem", 16 * _MIB), ("mem64pf", 256 * _MIB)] if fn == 0 else [("mem", 16384)])
        elif kind == "nvme":
            b.pci(f"{at}.0", 0x144D, 0xA808, 0x010802, parent=rp, driver="nvme", numa_node=numa,
                  link=("8.0 GT/s PCIe", 4), bars=[("mem64", 16384)])
        elif kind == "nic":
            for fn in (0, 1):
                b.pci(f"{at}.{fn}", 0x8086, 0x1521, 0x020000, parent=rp, driver="igb", numa_node=numa, acs=True,
                      revision=0x01, link=("5.0 GT/s PCIe", 4), bars=[("mem", _MIB), None, ("io", 32), ("mem", 16384)])
                b.sriov(f"{at}.{fn}", 7, 7, 0x1520, offset=0x80, stride=4,
                        vf_drivers=["igbvf", "vfio-pci"] * 3 + [None], vf_bars=[("mem64pf", 16384), ("mem64pf", 16384)])
        else:  # switch: upstream port, two downstream ports, an NVMe behind each
            b.bridge(f"{at}.0", parent=rp, kind="upstream", vendor=0x10B5, device=0x8747, numa_node=numa)
            for k in (0, 1):
                down = f"{dom:04x}:{bus + 1:02x}:{k * 8:02x}.0"
                b.bridge(down, parent=f"{at}.0", kind="downstream", vendor=0x10B5, device=0x8747, numa_node=numa)
                b.pci(f"{dom:04x}:{bus + 2 + k:02x}:00.0", 0x144D, 0xA808, 0x010802, parent=down, driver="nvme",
                      numa_node=numa, link=("8.0 GT/s PCIe", 4), bars=[("mem64", 16384)])
        made += sizes[kind]
    b.build()
    return b


def make_busy_host(root: str | Path) -> SysfsBuilder:
    b = SysfsBuilder(root, nodes=1, cpus_per_node=16, auto_groups=True)
    b.iommu("intel", units=1, group_type="identity")
    b.proc(f"BOOT_IMAGE=/vmlinuz-{KERNEL_RELEASE} root=/dev/mapper/vg0-root ro intel_iommu=on iommu=pt "
           "console=tty0 console=ttyS4,115200n8", swaps=[("/dev/mapper/vg0-swap", 8388604)])
    chip = dict(numa_node=0, link=None, reset_methods=(), subsystem=(0x15D9, 0x1B64), revision=0x09)
    b.pci("0000:00:00.0", 0x8086, 0x2020, 0x060000, **{**chip, "revision": 0x07})
    # storage: an SSD on each AHCI controller (sSATA 00:11.5, SATA 00:17.0): EFI + RAID1 member; md0 is LVM's PV
    ahci_bars = [("mem", 8192), ("mem", 256), ("io", 8), ("io", 4), ("io", 32), ("mem", 2048)]
    b.pci("0000:00:11.5", 0x8086, 0xA1D2, 0x010601, driver="ahci", bars=ahci_bars, **chip)
    b.pci("0000:00:17.0", 0x8086, 0xA182, 0x010601, driver="ahci", bars=ahci_bars, **chip)
    b.sata("0000:00:17.0", serial="S4X6NF0N101010A", size_gib=465, partitions=(512, 476_000))  # sda
    b.sata("0000:00:11.5", serial="S4X6NF0N202020B", size_gib=465, partitions=(512, 476_000))  # sdb
    b.md(0, ["sda2", "sdb2"])
    b.dm("vg0-root", ["md0"], sectors=400 << 21)  # dm-0
    b.dm("vg0-swap", ["md0"], sectors=8 << 21)  # dm-1
    # boot VGA: ASPEED BMC behind its PCIe-to-PCI bridge; PCI serial card with the serial console
    _bmc_vga_and_serial_card(b, bmc_subsystem=(0x15D9, 0x1B64))
    b.pci("0000:00:1f.0", 0x8086, 0xA1C1, 0x060100, **chip)
    b.serial("ttyS0", backing="pnp", pnp_id="00:04", serial_base=True)
    b.serial("ttyS4", backing="pci", address="0000:03:00.0", irq=35, serial_base=True)
    b.console("tty0 ttyS4")
    # a GPU for VMs
    b.bridge("0000:17:00.0", device=0x2030, numa_node=0)
    _gtx1080ti(b, "0000:17:00.0", 0x18, "vfio-pci", "vfio-pci", numa=0, override="vfio-pci")
    # network: X710 ports in bond0 under br0; X550 storage port and a spare; E810 with VFs
    b.bridge("0000:3a:00.0", device=0x2030, numa_node=0)
    nic = dict(parent="0000:3a:00.0", numa_node=0, acs=True, multifunction=True, link=("8.0 GT/s PCIe", 8))
    for fn in (0, 1):
        b.pci(f"0000:3b:00.{fn}", 0x8086, 0x1572, 0x020000, driver="i40e", subsystem=(0x15D9, 0x0000),
              bars=[("mem64pf", 8 * _MIB), ("mem64pf", 32 * 1024)], **nic)
        b.netdev(f"0000:3b:00.{fn}", f"eno{fn + 1}", f"3c:ec:ef:10:20:{fn:02x}", phys_port_name=None)
        b.pci(f"0000:3c:00.{fn}", 0x8086, 0x1563, 0x020000, driver="ixgbe", subsystem=(0x8086, 0x0001),
              bars=[("mem64pf", 2 * _MIB), ("mem64pf", 16 * 1024)], **{**nic, "link": ("8.0 GT/s PCIe", 4)})
        b.netdev(f"0000:3c:00.{fn}", f"ens2f{fn}", f"b4:96:91:30:40:{fn:02x}", phys_port_name=None)
        b.pci(f"0000:3d:00.{fn}", 0x8086, 0x159B, 0x020000, driver="ice", subsystem=(0x8086, 0x0003),
              bars=[("mem64pf", 32 * _MIB), ("mem64pf", 64 * 1024)], **{**nic, "link": ("16.0 GT/s PCIe", 8)})
        b.netdev(f"0000:3d:00.{fn}", f"ens3f{fn}", f"40:a6:b7:50:60:{fn:02x}", phys_port_name=None)
    b.net_upper("bond", "bond0", ["eno1", "eno2"])
    b.net_upper("bridge", "br0", ["bond0"])
    b.ip("br0", "192.0.2.10/24", gateway="192.0.2.1", metric=425)
    b.ip("br0", "2001:db8::10/64")
    b.ip("br0", "fe80::3eec:efff:fe10:2000/64")
    b.ip("ens2f0", "198.51.100.5/24", metric=101)
    b.ip("ens2f1", "fe80::b696:91ff:fe30:4001/64")
    b.sriov("0000:3d:00.0", 64, 4, 0x1889, offset=0x10, stride=1, vf_drivers=["iavf", "vfio-pci", None, None],
            vf_bars=[("mem64pf", 128 * 1024), ("mem64pf", 16 * 1024)])
    b.netdev("0000:3d:02.0", "ens3f0v0", "02:a6:b7:50:60:10", phys_port_name=None)
    b.ip("ens3f0v0", "203.0.113.7/24")
    b.sriov("0000:3d:00.1", 64, 2, 0x1889, offset=0x4F, stride=1,
            vf_bars=[("mem64pf", 128 * 1024), ("mem64pf", 16 * 1024)])
    # NVMe: a mounted one, a whole-disk PV whose LV is not mounted, an idle one
    for bus, idx, serial in ((0x5E, 0, "S4EWNX0N500001"), (0x5F, 1, "S4EWNX0N500002"), (0x60, 2, "S4EWNX0N500003")):
        b.bridge(f"0000:5d:{idx * 2:02x}.0", device=0x2030 + idx, numa_node=0)
        b.pci(f"0000:{bus:02x}:00.0", 0x144D, 0xA808, 0x010802, parent=f"0000:5d:{idx * 2:02x}.0", driver="nvme",
              numa_node=0, subsystem=(0x144D, 0xA801), link=("8.0 GT/s PCIe", 4), bars=[("mem64", 16 * 1024)])
        b.nvme(f"0000:{bus:02x}:00.0", idx, serial=serial, partitions=(952_000,) if idx == 0 else ())
    b.dm("vg1-data", ["nvme1n1"])  # dm-2
    b.mount("/dev/mapper/vg0-root", "/", "ext4", "rw,relatime,errors=remount-ro")
    b.mount("/dev/sda1", "/boot/efi", "vfat", "rw,relatime,fmask=0077,dmask=0077,codepage=437,iocharset=ascii")
    b.mount("/dev/nvme0n1p1", "/var/lib/libvirt/images", "xfs", "rw,relatime,attr2,inode64,logbufs=8,noquota")
    b.build()
    return b


def busy_host(root: str | Path) -> Path:
    return make_busy_host(root).root


def gpu_server(root: str | Path) -> Path:
    return make_gpu_server(root).root


def broken_desktop(root: str | Path) -> Path:
    return make_broken_desktop(root).root


def bare_host(root: str | Path) -> Path:
    return make_bare_host(root).root


def big_tree(root: str | Path, n: int = 4096) -> Path:
    return make_big_tree(root, n).root
