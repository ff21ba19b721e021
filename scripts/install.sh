#!/usr/bin/env bash
# Install passthru into ./.venv, with the Debian packages it uses (hwdata for device names, kmod for modprobe).
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh --test   # plus test tools, PostgreSQL and the real-kernel lab's packages (QEMU, busybox...)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

pkgs=(python3 python3-venv python3-pip hwdata pciutils usbutils kmod)
if [ "$want_test" = 1 ]; then
    pkgs+=(qemu-system-x86 busybox-static e2fsprogs util-linux systemd libvirt-clients libxml2-utils gcc make xz-utils)
    pkgs+=(openssl)  # the agent's TLS test makes a self-signed certificate
    pkgs+=(libvirt-daemon-system libvirt-daemon-driver-qemu)  # tests start their own libvirtd (tests/libvirtd.py)
    pkgs+=(postgresql)  # tests start their own PostgreSQL server in a temporary directory (tests/pg.py)
    pkgs+=(chromium chromium-driver)  # the topology page is opened in headless chromium (tests/test_topology_browser.py)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "install.sh: passthru needs Python >= 3.11; set PYTHON=" >&2; exit 2; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip==24.3.1 >/dev/null
if [ "$want_test" = 1 ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
else
    .venv/bin/python -m pip install -q -e .
fi
echo "passthru installed: $(.venv/bin/passthru --version)"
