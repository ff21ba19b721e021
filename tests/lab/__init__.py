"""The real-kernel lab: a Debian kernel under QEMU (TCG) with a virtual Intel IOMMU and real devices to discover.

build.py builds and caches the kernel and initramfs, vm.py boots one guest session, guest.py groups lab tests so one
boot serves many of them, conftest.py wires both into pytest. See README.md.
"""
