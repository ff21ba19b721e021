"""Device specs for `passthru assign`: every form parsed and normalized, and bad ones rejected with the forms named."""

from __future__ import annotations

import pytest

from passthru.errors import UsageError
from passthru.inventory.spec import parse_spec


@pytest.mark.parametrize("text,form,value,identity", [
    ("0000:86:00.0", "pci", "0000:86:00.0", "pci:0000:86:00.0"),
    ("86:00.1", "pci", "0000:86:00.1", "pci:0000:86:00.1"),
    ("10000:00:02.0", "pci", "10000:00:02.0", "pci:10000:00:02.0"),
    ("gpu", "name", "gpu", None),
    ("intel-qat", "name", "intel-qat", None),
    ("usb:0403:6001", "usb-id", "0403:6001", None),
    ("usb:0403:6001:A50285BI", "usb-id", "0403:6001:A50285BI", None),
    ("usb:046D:C31C", "usb-id", "046d:c31c", None),
    ("usb:1-1.3", "usb-port", "1-1.3", "usb:1-1.3"),
    ("usb:003-2", "usb-port", "3-2", "usb:3-2"),
    ("serial:/dev/ttyS1", "serial", "/dev/ttyS1", "serial:/dev/ttyS1"),
    ("serial:/dev/ttyUSB0", "serial", "/dev/ttyUSB0", "serial:/dev/ttyUSB0"),
    ("mdev:4B20D080-1B54-4048-85B3-A6A62D165C01", "mdev", "4b20d080-1b54-4048-85b3-a6a62d165c01",
     "mdev:4b20d080-1b54-4048-85b3-a6a62d165c01"),
])
def test_forms(text, form, value, identity):
    s = parse_spec(text)
    assert (s.form, s.value, s.identity) == (form, value, identity)


@pytest.mark.parametrize("text,words", [
    ("86:00", "not a device spec"),
    ("0000:86:20.0", "not a PCI address"),
    ("usb:0403", "usb:VVVV:PPPP"),
    ("usb:1-", "usb:BUS-PORT"),
    ("serial:ttyS1", "serial:/dev/ttyS1"),
    ("serial:/etc/passwd", "serial:/dev/ttyS1"),
    ("mdev:1234", "mdev:UUID"),
    ("GPU!", "not a device spec"),
    ("", "not a device spec"),
])
def test_bad_specs_name_the_fix(text, words):
    with pytest.raises(UsageError) as e:
        parse_spec(text)
    assert words in str(e.value) and "\n" not in str(e.value)
