"""Device identities (passthru/identity.py): what the inventory stores, parsed once instead of sliced by hand."""

import pytest

from passthru.identity import Identity, parse, pci, pci_address


@pytest.mark.parametrize("text,bus,key", [
    ("pci:0000:01:00.0", "pci", "0000:01:00.0"),
    ("usb:1-2.1", "usb", "1-2.1"),
    ("serial:/dev/ttyS1", "serial", "/dev/ttyS1"),
    ("mdev:4b20d080-1b54-4048-85b3-a6a62d165c01", "mdev", "4b20d080-1b54-4048-85b3-a6a62d165c01"),
])
def test_parse_splits_at_the_first_colon_only(text, bus, key):
    ident = parse(text)
    assert ident == Identity(bus, key) and str(ident) == text


@pytest.mark.parametrize("text", ["0000:01:00.0", "vf:enp1s0:0", "pci:", "", "PCI:0000:01:00.0"])
def test_parse_refuses_what_is_not_an_identity(text):
    with pytest.raises(ValueError, match="not a device identity"):
        parse(text)


def test_pci_address_only_for_pci_identities():
    assert pci_address("pci:0000:3b:00.2") == "0000:3b:00.2"
    assert pci_address(pci("0000:3b:00.2")) == "0000:3b:00.2"
    assert pci_address("usb:1-2") is None and pci_address("mdev:0000:01:00.0") is None
