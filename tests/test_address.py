"""PCI address and USB port path parsing: every accepted form, every rejected one, round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passthru.host.pci import PciAddress, normalize_address, parse_address
from passthru.host.usb import parse_port_path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0000:42:00.1", "0000:42:00.1"),
        ("42:00.1", "0000:42:00.1"),
        ("0000:0A:1F.7", "0000:0a:1f.7"),
        ("10000:00:00.0", "10000:00:00.0"),  # VMD / Hyper-V 32-bit domain
        (" 3:00.0 ", "0000:03:00.0"),
    ],
)
def test_accepts(text, expected):
    assert normalize_address(text) == expected


@pytest.mark.parametrize("text", ["", "42:00", "0000:42:00.8", "0000:42:20.0", "zz:00.0", "0000:042:00.0",
                                  "1:2:3:4.0", "0000:42:00.1;reboot"])
def test_rejects_with_the_form_named(text):
    with pytest.raises(ValueError, match="DOMAIN:BUS:SLOT.FUNCTION"):
        parse_address(text)


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7))
def test_round_trip(dom, bus, slot, fn):
    a = PciAddress(dom, bus, slot, fn)
    assert parse_address(str(a)) == a


def test_usb_port_paths():
    assert parse_port_path("1-1.2") == (1, (1, 2))
    assert parse_port_path("3-10") == (3, (10,))
    for bad in ("usb1", "1-", "1-1:1.0", "a-1", "1.2"):
        with pytest.raises(ValueError, match="BUS-PORT"):
            parse_port_path(bad)
