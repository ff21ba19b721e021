"""passthru: VM device passthrough for Linux KVM/QEMU hosts.

Library entry points (the CLI and the agent only parse input and call these):

- :class:`passthru.host.root.HostRoot` — where the host's /sys, /proc, /dev, /etc live (injectable for tests)
- :func:`passthru.discovery.discover` — PCI functions, USB devices and serial ports, classified into kinds
- :func:`passthru.host.iommu.scan_groups` — IOMMU groups with a viability verdict
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
