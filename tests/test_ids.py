"""pci.ids / usb.ids lookups against small files in the real format, and the machine's hwdata when present."""

import os

import pytest

from passthru.host.ids import IdsDb, pci_ids

PCI_IDS = """\
# comment line
#\tvendor  vendor_name
10de  NVIDIA Corporation
\t1b06  GP102 [GeForce GTX 1080 Ti]
\t\t10de 120f  GP102 [GeForce GTX 1080 Ti Founders Edition]
# a comment inside a block
\t\t1043 85e4  ROG STRIX GTX 1080 Ti
\t10ef  GP102 HDMI Audio Controller
10df  Emulex Corporation
\t1b06  Not the NVIDIA one
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device

# List of known device classes
C 01  Mass storage controller
\t08  Non-Volatile memory controller
\t\t02  NVM Express
C 03  Display controller
\t00  VGA compatible controller
\t\t00  VGA controller
\t02  3D controller
C 04  Multimedia controller
\t03  Audio device
"""


@pytest.fixture
def db(tmp_path):
    p = tmp_path / "pci.ids"
    p.write_text(PCI_IDS)
    return IdsDb(str(p))


def test_vendor_device_subsystem(db):
    assert db.vendor(0x10DE) == "NVIDIA Corporation"
    assert db.device(0x10DE, 0x1B06) == "GP102 [GeForce GTX 1080 Ti]"
    assert db.device(0x10DE, 0x10EF) == "GP102 HDMI Audio Controller"
    assert db.subsystem(0x10DE, 0x1B06, 0x1043, 0x85E4) == "ROG STRIX GTX 1080 Ti"
    assert db.subsystem(0x10DE, 0x1B06, 0x10DE, 0x120F) == "GP102 [GeForce GTX 1080 Ti Founders Edition]"
    # the same device id under another vendor must not leak across vendor blocks
    assert db.device(0x10DF, 0x1B06) == "Not the NVIDIA one"
    assert db.device(0x10DF, 0x10EF) is None
    assert db.device(0x1AF4, 0x1B06) is None
    assert db.vendor(0x1234) is None


def test_classes(db):
    assert db.pci_class(0x030000) == "VGA compatible controller"
    assert db.pci_class(0x030200) == "3D controller"
    assert db.pci_class(0x010802) == "Non-Volatile memory controller (NVM Express)"
    assert db.pci_class(0x040300) == "Audio device"
    assert db.pci_class(0x0C0330) is None  # class 0c not in this file
    # a vendor named like a class id must not be taken for a class
    assert db.vendor(0x0003) is None


def test_missing_file_gives_no_names(tmp_path):
    db = IdsDb(str(tmp_path / "nope.ids"))
    assert not db.available
    assert db.vendor(0x10DE) is None and db.pci_class(0x030000) is None


@pytest.mark.skipif(not os.path.exists("/usr/share/misc/pci.ids"), reason="hwdata not installed")
def test_real_hwdata():
    db = pci_ids(None)
    assert db.vendor(0x8086) == "Intel Corporation"
    assert db.device(0x8086, 0x10D3) == "82574L Gigabit Network Connection"
    assert db.pci_class(0x0C0330) == "USB controller (XHCI)"
